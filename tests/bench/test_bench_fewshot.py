"""``dynadapter bench fewshot`` on a tiny random ViT: K images a class per cell, its section and figure.

A benchmark, not a test of accuracy: nothing here asserts a learned accuracy or a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dynadapter.bench.suite.cells import BENCH_FILE
from tests.support.bench import bench
from tests.support.tiny import TINY_BACKBONE


def test_fewshot_trains_k_per_class_and_reports_every_arm(tmp_path: Path) -> None:
    docs, root = tmp_path / "docs", tmp_path / "cells"
    argv = ["--backbone", "vit_tiny_patch16_224", *[f"--backbone-arg={k}={v}" for k, v in TINY_BACKBONE.items()]]
    argv += [
        "--img-size",
        "16",
        "--tasks",
        "digits",
        "--shots",
        "1,2",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--workers",
        "0",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only spins on a busy 2-core machine
    try:
        bench("fewshot", *argv, "--root", str(root), "--docs", str(docs))
    finally:
        torch.set_num_threads(threads)
    cells = sorted(p.parent.name for p in root.rglob(BENCH_FILE))
    assert cells == sorted(f"{c}-k{k}" for c in ("adapter-dyn", "adapter-static", "none-probe") for k in (1, 2))
    for k in (1, 2):
        config = json.loads((root / "digits" / f"adapter-static-k{k}" / "config.json").read_text())
        assert set(config["data_summary"]["images"]["train"].values()) == {k}
        # 10 or 20 images in batches of 8: 2 or 3 batches an epoch, so 1 epoch makes the 2 steps asked for
        assert config["train"]["epochs"] == 1 and config["train"]["shots"] == k
    section = json.loads((docs / "results.json").read_text())["fewshot"]
    assert [(r["task"], r["shots"]) for r in section["rows"]] == [("digits", 1), ("digits", 2)]
    for row in section["rows"]:
        for arm in ("dyn", "static", "probe"):
            point = row[arm]
            assert 0.0 <= point["acc"] <= 1.0 and 0.0 <= point["shifted_acc"] <= 1.0 and point["gflops"] > 0
        # the static model runs the whole backbone; the probe stops at its block
        assert row["probe"]["gflops"] <= row["static"]["gflops"]
    page = (docs / "results.md").read_text()
    assert "## Few-shot" in page and "| digits | 1 |" in page and "| digits | 2 |" in page
    assert (docs / "results" / "fewshot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
