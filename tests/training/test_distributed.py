"""torchrun with 2 gloo processes follows the 1-process run on the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = [
    "--backbone",
    "vit_tiny_patch16_224",
    "--backbone-arg",
    "depth=2",
    "--backbone-arg",
    "embed_dim=32",
    "--backbone-arg",
    "num_heads=2",
    "--backbone-arg",
    "patch_size=4",
    "--img-size",
    "16",
    "--exits",
    "1,2",
    "--epochs",
    "2",
    "--batch-size",
    "40",
    "--lr",
    "1e-2",
    # dropout masks differ per process by design; the rest is deterministic
    "--forward-sparsity",
    "0",
    "--backward-sparsity",
    "0.2",
]


def run_train(out: Path, nproc: int) -> list[dict]:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "dynadapter"]
        if nproc > 1
        else [sys.executable, "-m", "dynadapter"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [*launcher, "train", "--data", "builtin:digits", "--out", str(out), *TINY],
        check=True,
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        timeout=300,
    )
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    single, double = run_train(tmp_path / "one", 1), run_train(tmp_path / "two", 2)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    for a, b in zip(single, double, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["exit_loss"] == pytest.approx(a["exit_loss"], rel=1e-4)
        assert b["val_acc"] == pytest.approx(a["val_acc"], abs=0.01)
