"""The demo models that `make serve` serves, rebuilt from what training produced.

Only training's output is committed (``demo/<name>/``: config.json, checkpoint.safetensors with
PETL and head parameters, calibration.json, metrics.jsonl). ``dynadapter demo build`` turns it into
a model repository: fetch and convert the builtin backbone (cached), export the segments, check
parity. A finished export records the sha256 of the checkpoint it came from and the exporter's
revision, so later runs reuse it until either changes. The tiny fixture model (a committed model
repository, no backbone to fetch) is copied beside it, and copied again when the committed one changed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
from pathlib import Path

from dynadapter.contract import sha256_file
from dynadapter.export.exporter import EXPORTER_REVISION, export_run
from dynadapter.export.precisions import cpu_runtime_precisions
from dynadapter.training.run_dir import checkpoint_path

log = logging.getLogger(__name__)

DEMO_ROOT = Path(__file__).resolve().parents[1] / "demo"
#: model name in the repository -> committed run directory
DEMO_RUNS = {"mnist": DEMO_ROOT / "dinov2-mnist"}
#: committed ready-made model repository (the fast fixture of the tests)
FIXTURE_REPO = DEMO_ROOT / "model_repo"
SOURCE_FILE = "source.json"


def build_demo_repo(out: Path, version: str = "1", fixtures: bool = True, demo_dir: Path | None = None) -> Path:
    """Export every demo run into ``out`` (skipping up-to-date ones) and, with ``fixtures``, add the
    fixture models. ``demo_dir``: where the committed runs are (default: the checkout's ``demo/``;
    an installed wheel has none, so the image build passes it).

    Holds an exclusive lock on ``out/.build.lock`` meanwhile: two builds of one repository (two
    ``make serve`` at once) would otherwise export into the same folders.
    """
    out.mkdir(parents=True, exist_ok=True)
    with (out / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build(out, version, fixtures, Path(demo_dir) if demo_dir is not None else DEMO_ROOT)
    return out


def _build(out: Path, version: str, fixtures: bool, demo_dir: Path) -> None:
    for name, committed in DEMO_RUNS.items():
        run = demo_dir / committed.relative_to(DEMO_ROOT)
        dest = out / name / version
        precisions = demo_precisions()
        source = {
            "run": str(run),
            "checkpoint_sha256": sha256_file(checkpoint_path(run)),
            "exporter": EXPORTER_REVISION,
            "precisions": precisions,
        }
        if _is_current(dest, source):
            log.info("%s is up to date", dest)
            continue
        log.info("exporting the demo %s from %s (fetches the backbone on first use)", name, run)
        # int8 where it passes the gate (as `dynadapter export` by default); fp32 is served otherwise. Plain
        # PTQ only: accuracy control took 22 min and over 14 GB on the demo, too much for `make serve`'s build.
        export_run(run, out, name=name, version=version, precisions=precisions, int8_method="ptq", int8_required=False)
        (dest / SOURCE_FILE).write_text(json.dumps(source, indent=2))
    for fixture in (demo_dir / FIXTURE_REPO.relative_to(DEMO_ROOT)).iterdir() if fixtures else ():
        if fixture.is_dir() and not _same_tree(fixture, out / fixture.name):
            shutil.rmtree(out / fixture.name, ignore_errors=True)
            shutil.copytree(fixture, out / fixture.name)


def demo_model_name(run_dir: Path) -> str | None:
    """The demo model a run directory is the committed run of (its name in the demo repository), else None."""
    return next((name for name, run in DEMO_RUNS.items() if run.resolve() == run_dir.resolve()), None)


def demo_precisions() -> list[str]:
    """fp32 and int8 where openvino and nncf are installed (the `train` extra), else fp32 alone: the
    service serves the fastest precision present (int8 on OpenVINO, README "Serving on a CPU")."""
    return cpu_runtime_precisions()


def _same_tree(committed: Path, copy: Path) -> bool:
    """The copy has every manifest of the committed fixture, byte for byte (a manifest holds the
    sha256 of each of its segments, which the server checks at load)."""
    manifests = list(committed.glob("*/manifest.json"))
    return all(
        (copy / m.relative_to(committed)).is_file() and (copy / m.relative_to(committed)).read_bytes() == m.read_bytes()
        for m in manifests
    )


def _is_current(dest: Path, source: dict) -> bool:
    path = dest / SOURCE_FILE
    return (dest / "manifest.json").is_file() and path.is_file() and json.loads(path.read_text()) == source
