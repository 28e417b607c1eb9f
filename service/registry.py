"""The models being served: every model of the repository (or those listed), each in the versions its policy picks.

Loading a model version opens its sessions and warms them in a worker thread before the version
takes traffic, so a load never delays a request. Requests hold the version they were admitted on
(`Engine.admitted`); a version replaced or unloaded is retired only once those requests have
finished. A version that cannot be loaded (missing files, sha256 mismatch, a session onnxruntime
refuses) is refused as a whole and whatever served before keeps serving.
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from dynadapter.contract.model_repository import (
    InvalidModelName,
    ModelLoadError,
    check_model_name,
    check_version,
    load_model,
    model_folders,
    model_path,
    version_folders,
    version_identity,
)
from dynadapter.service.backends.choice import check_choice
from dynadapter.service.decoding import DecodePool
from dynadapter.service.engine import Engine, latency_controller
from dynadapter.service.errors import ApiError, model_not_found, not_ready
from dynadapter.service.metrics import ServiceMetrics
from dynadapter.service.settings import Settings

logger = logging.getLogger(__name__)

Identity = tuple[tuple[str, int, int, int, int], ...] | None


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version policy: `latest:N`, `all`, or `specific:V1,V2` (numeric version folders)."""

    kind: str  # "latest" | "all" | "specific"
    count: int = 1  # latest:N
    versions: tuple[str, ...] = ()  # specific

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        kind, _, rest = text.partition(":")
        if kind == "latest":
            return cls("latest", count=int(rest))
        if kind == "specific":
            return cls("specific", versions=tuple(rest.split(",")))
        return cls("all")

    def select(self, on_disk: list[str]) -> list[str]:
        """The versions to serve out of the numeric version folders found, highest first."""
        ordered = sorted(on_disk, key=int, reverse=True)
        if self.kind == "latest":
            return ordered[: self.count]
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered

    def as_triton(self) -> dict[str, object]:
        """The `version_policy` of Triton's model configuration."""
        if self.kind == "latest":
            return {"latest": {"num_versions": self.count}}
        if self.kind == "specific":
            return {"specific": {"versions": [int(v) for v in self.versions]}}
        return {"all": {}}


def versions_on_disk(repo: Path, name: str) -> list[str]:
    """The version folders of `name` inside the repository; none for a name that is no model folder."""
    try:
        return version_folders(repo, name)
    except InvalidModelName:
        return []


def invalid_name(err: InvalidModelName) -> ApiError:
    """400 for a name or version that is no folder of the repository (answered before any file is read)."""
    return ApiError(400, "invalid_model_name", str(err))


def checked(name: str, version: str | None = None) -> None:
    """`invalid_name` (400) unless `name` (and `version`) follow the repository's rules."""
    try:
        check_model_name(name)
        if version is not None:
            check_version(version)
    except InvalidModelName as err:
        raise invalid_name(err) from None


class ModelRegistry:
    """Every served model version (an `Engine` each, by name and version), the process's decode pool, and
    why a model's last load was refused.

    Created with the app; `load_all` at startup, `load`/`unload` from the repository routes and `poll`,
    `stop` at shutdown. Runs on the event loop: the reading methods (`get`, `engines`, `names`) never
    await, so a route never sees a swap half-done; loads and unloads take one lock, one at a time, and
    open sessions in worker threads.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.policy = VersionPolicy.parse(settings.version_policy)
        self._metrics = metrics
        # One decode pool for the process, shared by every model: its memory bound is per process.
        self.decoder = DecodePool(settings.decode_workers, settings.decode_queue)
        self._models: dict[str, dict[str, Engine]] = {}  # name -> version -> engine, every one warm
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._retiring: dict[asyncio.Task[None], Engine] = {}  # replaced versions waiting for their requests
        self._refused: dict[str, str] = {}  # name -> why its last load failed (the repository index shows it)
        self._identity: dict[Engine, Identity] = {}  # served engine -> its folder's files when it was opened
        self._unloaded: set[str] = set()  # explicitly unloaded: not expected to serve (readiness)

    # Reading: what routes use. None of these await, so a swap is never seen half-done.

    def names(self) -> list[str]:
        return sorted(self._models)

    def engines(self, name: str) -> list[Engine]:
        """Every served version of `name`, highest first; `model_not_found` when none."""
        checked(name)
        versions = self._models.get(name)
        if not versions:
            raise model_not_found(name, None, self.names())
        return [versions[v] for v in sorted(versions, key=int, reverse=True)]

    def get(self, name: str | None = None, version: str | None = None) -> Engine:
        """The engine for `name` (None: the default model) at `version` (None: its highest served one)."""
        if name is None:
            name = self.default_name()
        checked(name, version)  # 400 for '..', 'a/b', '１', ...: never looked up, never a file
        versions = self._models.get(name)
        if not versions:
            raise model_not_found(name, None, self.names())
        if version is None:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise model_not_found(name, version, sorted(versions, key=int))
        return versions[version]

    def default_name(self) -> str:
        if self.settings.model_name is not None:
            return self.settings.model_name
        if not self._models:
            raise not_ready()
        return min(self._models)

    def ready(self) -> bool:
        """Readiness, strict as Triton's default (`--strict-readiness`): see `unready_reason`."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why the service is not ready, or None when it is: some model serves, and so does every model that
        should, that is each model of the `models` setting (or folder of the repository) that was not
        explicitly unloaded, and the default model (setting `model_name`) if set."""
        if not self._models:
            return "no model is served"
        should = {name for name in self.candidates() if name not in self._unloaded}
        should |= {self.settings.model_name} if self.settings.model_name is not None else set()
        missing = sorted(should - set(self._models))
        if missing:
            return f"model(s) {', '.join(map(repr, missing))} should serve and do not (the repository index says why)"
        return None

    def index(self) -> list[dict[str, str]]:
        """Triton's repository index: every model folder with the state of its versions.

        Each served version is READY; a model that serves nothing, or whose last load was refused
        (the versions before it still serve), has an UNAVAILABLE entry with the reason, if any.
        """
        entries = []
        for name in self.candidates():
            served = self._models.get(name, {})
            entries += [{"name": name, "version": v, "state": "READY"} for v in sorted(served, key=int)]
            if name in self._refused:
                entries.append({"name": name, "state": "UNAVAILABLE", "reason": self._refused[name]})
            elif not served:
                entries.append({"name": name, "state": "UNAVAILABLE"})
        return entries

    # Loading and unloading.

    async def load_all(self) -> None:
        """At start: every model listed (or in the repository); `ModelLoadError` on the first that fails."""
        names = self.candidates()
        if not names:
            raise ModelLoadError(f"model repository {self.settings.model_repo} holds no model")
        for name in names:
            await self.load(name)
        if self.settings.model_name is not None and self.settings.model_name not in self._models:
            raise ModelLoadError(f"the default model {self.settings.model_name!r} is not among those loaded")

    async def load(self, name: str) -> None:
        """(Re)load `name` in the versions its policy picks now, reopening any whose files changed on disk;
        `ModelLoadError` (`InvalidModelName` for a name outside the repository) leaves it as it was."""
        model_path(self.settings.model_repo, name)  # confined, before anything else is read
        async with self._lock:
            try:
                await self._load(name)
            except ModelLoadError as err:
                if name in self.candidates():  # only model folders: a name tried is not kept
                    self._refused[name] = self.public(err)
                raise
            self._refused.pop(name, None)
            self._unloaded.discard(name)

    async def unload(self, name: str) -> None:
        """Take `name` out of service; requests already admitted on it finish first."""
        checked(name)
        async with self._lock:
            if name not in self._models:
                raise model_not_found(name, None, self.names())
            self._unloaded.add(name)
            for engine in self._models.pop(name).values():
                self._retire(engine)

    async def poll(self, period_s: float) -> None:
        """Forever: bring every model in step with the repository folder (new versions in, gone ones out)."""
        while True:
            await asyncio.sleep(period_s)
            try:
                for name in sorted(set(self.candidates()) | set(self._models)):
                    await self._sync(name)
            except Exception:  # nothing may end the poll: logged with its traceback, the next poll runs
                logger.exception("repository poll failed; polling again in %g s", period_s)

    async def stop(self) -> None:
        """Stop everything now (shutdown): the batchers fail what still waits."""
        for task, engine in list(self._retiring.items()):
            task.cancel()
            await engine.stop()
        for versions in self._models.values():
            for engine in versions.values():
                await engine.stop()
        self._models.clear()
        self._identity.clear()
        self.decoder.shutdown()

    async def _sync(self, name: str) -> None:
        wanted = self.policy.select(versions_on_disk(self.settings.model_repo, name))
        current = self._models.get(name, {})
        served = sorted(current, key=int, reverse=True)
        if wanted == served and not any(self._changed(name, v, e) for v, e in current.items()):
            return
        previous = self._refused.get(name)
        try:
            if wanted:
                await self.load(name)
            else:
                await self.unload(name)
        except ModelLoadError as err:  # a bad folder must not stop the poll; the index says why
            if str(err) != previous:  # once per distinct problem, not once per poll
                logger.warning("repository poll: model %s not loaded: %s", name, err)

    async def _load(self, name: str) -> None:
        wanted = self.policy.select(versions_on_disk(self.settings.model_repo, name))
        if not wanted:
            raise ModelLoadError(
                f"model {name!r}: no version in {self.settings.model_repo} matches the policy "
                f"{self.settings.version_policy}"
            )
        current = self._models.get(name, {})
        fresh: dict[str, Engine] = {}
        try:
            for version in wanted:
                engine = current.get(version)
                if engine is None or self._changed(name, version, engine):  # new, or its files were replaced
                    engine = await self._open(name, version)
                fresh[version] = engine
        except BaseException:
            for version, engine in fresh.items():
                if engine is not current.get(version):
                    self._identity.pop(engine, None)
                    await self._discard(engine)
            raise
        # The swap, in one step: new requests see the new engines from here on, those in flight finish
        # on the engine they were admitted on (a changed version's old engine retires like a gone one).
        self._models[name] = fresh
        kept = {id(engine) for engine in fresh.values()}
        for engine in current.values():
            if id(engine) not in kept:
                self._retire(engine)

    def _changed(self, name: str, version: str, engine: Engine) -> bool:
        """Whether the files of a served version differ from those it was opened from."""
        return self._identity.get(engine) != self._disk_identity(name, version)

    def _disk_identity(self, name: str, version: str) -> Identity:
        try:
            return version_identity(model_path(self.settings.model_repo, name, version))
        except (OSError, ModelLoadError):  # gone or unreadable: differs from anything served
            return None

    async def _open(self, name: str, version: str) -> Engine:
        """Verify, open and warm one version, off the event loop; started, ready for traffic."""
        path = Path(self.settings.model_repo) / name / version
        identity = self._disk_identity(name, version)  # before reading: a change during the load is seen next time
        try:
            engine = await asyncio.to_thread(Engine.load, self.settings, name, version, self._metrics, self.decoder)
        except ModelLoadError:
            raise
        except Exception as err:  # the runtime's own errors: a file that passed sha256 but is no model
            raise ModelLoadError(f"{path}: the runtime cannot open it: {err}") from err
        engine.start()
        try:
            await asyncio.to_thread(engine.warm_up)
        except Exception as err:  # the version cannot run: refused, never served
            await self._discard(engine)
            raise ModelLoadError(f"{path}: warm-up failed: {err}") from err
        self._identity[engine] = identity
        return engine

    async def _discard(self, engine: Engine) -> None:
        """Drop an engine that never served; the engine it was to replace, if any, owns its series again."""
        await engine.discard()
        serving = self._models.get(engine.name, {}).get(engine.version)
        if serving is not None:
            serving.declare_metrics()

    def _retire(self, engine: Engine) -> None:
        self._identity.pop(engine, None)
        task = asyncio.get_running_loop().create_task(engine.retire(), name=f"retire-{engine.name}-{engine.version}")
        self._retiring[task] = engine
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        logger.info("model %s version %s retires once its requests in flight finish", engine.name, engine.version)

    def candidates(self) -> list[str]:
        return model_names(self.settings)

    def public(self, err: Exception) -> str:
        """`err`'s message as clients may see it: paths relative to the model repository, whose own
        location is never shown (the server log keeps the full message)."""
        message = str(err)
        repo = Path(self.settings.model_repo)
        for root in sorted({str(repo.resolve()), str(repo.absolute()), str(repo)}, key=len, reverse=True):
            message = message.replace(root + "/", "").replace(root, "the model repository")
        return message


def model_names(settings: Settings) -> list[str]:
    """The models to serve: those listed in the settings, else every model folder of the repository."""
    if settings.models:
        return list(settings.models)
    return model_folders(settings.model_repo)


def check_repository(settings: Settings) -> None:
    """Verify every model version the settings select (files, sha256, that the backend and precision
    settings can serve it here, the latency controller's floor); `ModelLoadError` naming the first bad one."""
    policy = VersionPolicy.parse(settings.version_policy)
    names = model_names(settings)
    if not names:
        raise ModelLoadError(f"model repository {settings.model_repo} holds no model")
    for name in names:
        versions = policy.select(versions_on_disk(settings.model_repo, name))
        if not versions:
            raise ModelLoadError(
                f"model {name!r}: no version in {settings.model_repo} matches {settings.version_policy}"
            )
        for version in versions:
            model = load_model(settings.model_repo, name, version)  # the portable fp32 ONNX segments, always
            check_choice(settings, name, version)  # and the precision these settings serve here
            if settings.target_p95_ms is not None:
                latency_controller(model.manifest, settings)  # a floor the model cannot honour
