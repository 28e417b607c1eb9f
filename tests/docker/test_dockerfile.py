"""The serving image's Dockerfile, read statically: what the runtime stage holds, who it runs as, how
it is probed, and that the build context has every file it copies (the build itself is
`make docker-smoke`)."""

import fnmatch
import importlib.util
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("docker_requirements", ROOT / "docker" / "requirements.py")
requirements_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(requirements_script)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (KEYWORD, arguments)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """Global ARG defaults and the stages by name (the last one also as "")."""
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = re.split(r"\s+as\s+", rest, flags=re.IGNORECASE)
            base, name = parts[0], parts[1] if len(parts) > 1 else f"stage{len(stages)}"
            stage = stages[name] = Stage(name, base)
        elif stage is None and keyword == "ARG":
            key, _, default = rest.partition("=")
            global_args[key] = default
        elif stage is not None:
            stage.instructions.append((keyword, rest))
    stages[""] = stage
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile((ROOT / "Dockerfile").read_text())
RUNTIME = STAGES[""]


def stage_arg(stage: Stage, name: str) -> str:
    return next(rest.partition("=")[2] for rest in stage.args("ARG") if rest.partition("=")[0] == name)


def test_the_base_is_a_build_argument_defaulting_to_python_slim_bookworm() -> None:
    assert GLOBAL_ARGS["BASE_IMAGE"].removeprefix("docker.io/library/") == "python:3.11-slim-bookworm"
    # Every stage starts from it, so the builder's venv links to the runtime's interpreter.
    assert {s.base for n, s in STAGES.items() if n} <= {"${BASE_IMAGE}", "base", "builder"}


def test_the_runtime_is_the_last_stage_and_runs_as_a_numeric_non_root_user() -> None:
    assert RUNTIME.name == "runtime"
    (user,) = RUNTIME.args("USER")
    uid = int(re.sub(r"\$\{(\w+)\}", lambda m: stage_arg(RUNTIME, m.group(1)), user).partition(":")[0])
    assert uid >= 1000


def test_the_healthcheck_asks_readyz_with_python_since_the_image_has_no_curl() -> None:
    (healthcheck,) = RUNTIME.args("HEALTHCHECK")
    assert "/readyz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    assert healthcheck.split("CMD", 1)[1].strip().startswith('["python", "-c",')


def test_the_runtime_serves_the_baked_model_repository_unless_told_otherwise() -> None:
    env = " ".join(RUNTIME.args("ENV"))
    assert "DYNADAPTER_MODEL_REPO=/models" in env
    assert "--from=model-builder /models /models" in RUNTIME.args("COPY")
    assert RUNTIME.args("CMD") == ['["python", "-m", "dynadapter.service"]']
    assert stage_arg(STAGES["model-builder"], "DEMO") == "dinov2"  # the real demo (issue: backbone)


def test_torch_and_timm_only_reach_the_model_builder_stage() -> None:
    """The runtime copies the builder's venv (serve extra only) and the project wheel, nothing else."""
    copies_from = {m.group(1) for c in RUNTIME.args("COPY") for m in [re.match(r"--from=(\S+)", c)] if m}
    assert copies_from == {"builder", "model-builder"}
    assert "from=app" in " ".join(RUNTIME.args("RUN")) and "--no-deps" in " ".join(RUNTIME.args("RUN"))
    for name, stage in STAGES.items():
        uses_train = "train.txt" in " ".join(stage.args("RUN") + stage.args("COPY"))
        assert uses_train == (name in {"requirements", "model-builder"}), name
    assert "serve.txt" in " ".join(STAGES["builder"].args("RUN"))


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """A code change must not invalidate the pip install layers."""
    builder_copies = " ".join(STAGES["builder"].args("COPY"))
    assert "service" not in builder_copies and "pyproject" not in builder_copies
    app = [(kw, rest) for kw, rest in STAGES["app"].instructions if kw in {"COPY", "RUN"}]
    first_source = next(i for i, (kw, rest) in enumerate(app) if kw == "COPY" and rest.startswith("dynadapter"))
    assert any(kw == "RUN" and "build.txt" in rest for kw, rest in app[:first_source])
    # In the runtime, the model layer (large for the DINOv2 demo) comes before the code layer.
    runtime_steps = [rest for kw, rest in RUNTIME.instructions if kw in {"COPY", "RUN"}]
    assert runtime_steps.index("--from=model-builder /models /models") < next(
        i for i, r in enumerate(runtime_steps) if "from=app" in r
    )


def _read_pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_serve_requirements_come_from_pyproject_without_torch() -> None:
    serve = requirements_script.requirements(_read_pyproject(), ["serve"])
    names = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in serve}
    assert {"onnxruntime-gpu", "fastapi", "uvicorn", "prometheus-client", "numpy", "pillow"} <= names
    assert not names & {"torch", "timm", "torchvision"}
    with_cuda = requirements_script.requirements(_read_pyproject(), ["serve"], cuda_libs=True)
    assert any(r.startswith("onnxruntime-gpu[cuda,cudnn]") for r in with_cuda)
    assert len(with_cuda) == len(serve)


#: The releases that fixed advisories of the HTTP stack (CHANGELOG "Security"): neither the lower bounds
#: of pyproject.toml nor the image's pins may fall below them.
PATCHED = {"starlette": "0.47.2", "python-multipart": "0.0.18", "h11": "0.16.0"}


def _lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "docker" / "serve.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lower_bounds_exclude_the_releases_with_published_advisories() -> None:
    serve = [Requirement(r) for r in requirements_script.requirements(_read_pyproject(), ["serve"])]
    bounds = {canonicalize_name(r.name): r.specifier for r in serve}
    for name, fixed in PATCHED.items():
        assert name in bounds, f"{name} has no lower bound in the serve extra"
        # A lower bound at or above the fixed release: nothing before it is admitted.
        lower = [Version(s.version) for s in bounds[name] if s.operator in (">=", ">", "==", "~=")]
        assert lower and max(lower) >= Version(fixed), f"{name}: {bounds[name]} admits releases before {fixed}"


def test_the_image_pins_every_package_it_installs_within_pyproject() -> None:
    """docker/serve.lock pins the whole serve closure (a pin per requirement, each inside its range)."""
    pins = _lock()
    for requirement in map(Requirement, requirements_script.requirements(_read_pyproject(), ["serve"], cuda_libs=True)):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is installed by the image but not pinned in docker/serve.lock"
        assert pins[name] in requirement.specifier, f"{name}=={pins[name]} is outside {requirement.specifier}"
    for name, fixed in PATCHED.items():
        assert pins[name] >= Version(fixed), f"the image pins {name}=={pins[name]}, before the fix {fixed}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--requirement /build/serve.txt --constraint /build/serve.lock" in dockerfile


def test_lock_pins_a_pip_report_sorted_by_normalised_name() -> None:
    report = {
        "install": [
            {"metadata": {"name": "Pillow_Heif", "version": "1.9.0"}},
            {"metadata": {"name": "fastapi", "version": "0.165.0"}},
        ]
    }
    assert requirements_script.lock(report) == ["fastapi==0.165.0", "pillow-heif==1.9.0"]


def test_requirements_script_merges_extras_and_rejects_unknown_ones() -> None:
    pyproject = {
        "project": {
            "dependencies": ["numpy>=1.24"],
            "optional-dependencies": {
                "serve": ["onnxruntime-gpu>=1.18", "onnxruntime-gpu-tools", "numpy>=1.24"],
                "train": ["torch"],
            },
        }
    }
    assert requirements_script.requirements(pyproject, ["serve", "train"], cuda_libs=True) == [
        "numpy>=1.24",
        "onnxruntime-gpu[cuda,cudnn]>=1.18",
        "onnxruntime-gpu-tools",
        "torch",
    ]
    with pytest.raises(SystemExit, match="unknown extra"):
        requirements_script.requirements(pyproject, ["gpu"])


def _dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for this file: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", "")) for p in prefixes):
            allowed = negate
    return allowed


def test_every_copied_path_is_in_the_build_context() -> None:
    """A path missing or ignored fails `docker build` only at that step: catch it here."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = set()
    for stage in STAGES.values():
        for copy in stage.args("COPY"):
            words = [w for w in shlex.split(copy) if not w.startswith("--")]
            if not copy.startswith("--from"):
                sources.update(words[:-1])
    assert {
        "pyproject.toml",
        "dynadapter",
        "service",
        "models",
        "training",
        "export",
        "bench",
        "demo",
        "docker/requirements.py",
        "docker/serve.lock",
    } <= sources
    for source in sorted(sources):
        if any(c in source for c in "*?["):  # an optional file, e.g. README.m[d]
            matches = [str(p.relative_to(ROOT)) for p in ROOT.glob(source)]
        else:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
            matches = [source]
        for match in matches:
            assert _dockerignore_allows(match, patterns), f"COPY {match}: excluded by .dockerignore"
    for unwanted in (".venv", ".git", "var/model_repo", "tests/service", "runs"):
        assert not _dockerignore_allows(unwanted, patterns), f"{unwanted} would be sent to the build"


def test_the_committed_tiny_model_repository_is_what_the_default_image_serves() -> None:
    manifests = list((ROOT / "demo" / "model_repo").glob("*/*/manifest.json"))
    assert manifests, "demo/model_repo/<name>/<version>/manifest.json is what DEMO=tiny bakes in"
