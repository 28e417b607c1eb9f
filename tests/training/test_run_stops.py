"""However a training run stops (SIGTERM, Ctrl-C, an error), its pixel cache goes with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynadapter.errors import DataError
from dynadapter.training import run_dir as rd
from dynadapter.training import trainer
from dynadapter.training.data.cache import CACHE_FOLDER
from dynadapter.training.options import TrainOptions
from tests.support.folders import add_broken, class_folder, tiny_options
from tests.support.tiny import TINY_ARGS

COUNTS = {"cat": 24, "dog": 24, "owl": 24}
REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    class_folder(root, COUNTS)
    return root


def options(data: Path, out: Path, **overrides: object) -> TrainOptions:
    return tiny_options(data, out, cache="disk", **overrides)


def shared_memory_of(pid: int) -> list[str]:
    """torch's shared-memory segments of process ``pid`` still in /dev/shm."""
    shm = Path("/dev/shm")
    return sorted(p.name for p in shm.glob(f"torch_{pid}_*")) if shm.is_dir() else []


def wait_for(path: Path, process: subprocess.Popen, limit_s: float = 120.0) -> None:
    """Until ``path`` exists; fails if the run ends first or the bound passes (a hung run, not a speed check)."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("signum", "cache", "status"),
    [
        (signal.SIGTERM, "disk", 143),  # exit statuses as a shell reports a process ended by the signal
        (signal.SIGINT, "disk", 130),
        (signal.SIGTERM, "memory", 143),
    ],
)
def test_a_signalled_run_removes_its_cache(photos: Path, tmp_path: Path, signum: int, cache: str, status: int) -> None:
    out = tmp_path / "run"
    command = [sys.executable, "-m", "dynadapter", "train", "--data", str(photos), "--out", str(out), *TINY_ARGS]
    # far more epochs than the test waits for: the signal lands while DataLoader workers stream the images
    command += ["--epochs", "10000", "--batch-size", "16", "--workers", "1", "--cache", cache]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job inherits SIGINT ignored (and Python keeps it so): as from a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(out / rd.CONFIG, process)  # written once the caches are filled, before the first step
        caches = sorted((out / CACHE_FOLDER).glob("*.u8"))
        assert [p.name for p in caches] == (["train-rank0.u8", "val-rank0.u8"] if cache == "disk" else [])
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == status, stderr[-3000:]
    assert not (out / CACHE_FOLDER).exists()
    assert shared_memory_of(process.pid) == []
    told = {
        signal.SIGTERM: "SIGTERM: the run stops; its pixel caches are removed",
        signal.SIGINT: "dynadapter train: interrupted (SIGINT); the run's pixel caches are removed",
    }
    assert told[signum] in stderr and "Traceback" not in stderr, stderr[-4000:]


def test_an_error_during_training_removes_the_cache(photos: Path, tmp_path: Path, monkeypatch) -> None:
    def full_disk(out, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rd, "append_metrics", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device"):
        trainer.train(options(photos, out))
    assert (out / rd.CONFIG).exists() and not (out / CACHE_FOLDER).exists()


def test_a_refusal_while_screening_removes_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    class_folder(root, COUNTS)
    add_broken(root, "dog")
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"--bad-images skip leaves such files out"):
        trainer.train(options(root, out, bad_images="error"))
    assert not (out / CACHE_FOLDER).exists()


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGTERM, trainer.Terminated), (signal.SIGINT, KeyboardInterrupt)]
)
def test_a_stop_signal_raises_at_the_runs_next_check_and_the_previous_handlers_come_back(
    signum: int, raised: type[BaseException]
) -> None:
    def previous(signum, frame):
        raise AssertionError("the run's handler should have taken the signal")

    originals = {stop: signal.signal(stop, previous) for stop in trainer.STOP_SIGNALS}
    try:
        with pytest.raises(raised) as stopped, trainer.stop_signals_raise():
            os.kill(os.getpid(), signum)
            time.sleep(0.1)  # the handler runs (at the next bytecode) and only records the signal
            assert trainer.STOP.signum == signum
            trainer.STOP.check()  # the run's next safe point raises it
        if raised is trainer.Terminated:
            assert stopped.value.code == 128 + signal.SIGTERM
        assert trainer.STOP.signum == signum
        assert all(signal.getsignal(stop) is previous for stop in trainer.STOP_SIGNALS)
    finally:
        for stop, original in originals.items():
            signal.signal(stop, original)
