"""`dynadapter bench data` on a tiny configuration: it measures every folder size and writes its section."""

from __future__ import annotations

import json
from pathlib import Path

from dynadapter import cli
from dynadapter.bench.suite.data import CLASSES


def test_bench_data_streams_each_folder_and_writes_its_section(tmp_path: Path) -> None:
    argv = ["bench", "data", "--counts", "16,40", "--photo-size", "64x48", "--img-size", "16", "--epochs", "2"]
    argv += ["--workers", "1", "--model-steps", "1", "--batch-size", "4", "--backbone", "vit_tiny_patch16_224"]
    argv += ["--backbone-arg", "depth=2", "--backbone-arg", "embed_dim=32", "--backbone-arg", "num_heads=2"]
    argv += ["--backbone-arg", "patch_size=4", "--root", str(tmp_path), "--docs", str(tmp_path / "docs")]
    cli.main(argv)
    section = json.loads((tmp_path / "docs" / "results.json").read_text())["data"]
    rows = section["rows"]
    # the train split of each folder: 70% of it (15% val, 15% test held out), no file unusable
    assert [r["images"] for r in rows] == [12, 28] and all(r["unusable"] == 0 for r in rows)
    assert all(len(r["seconds"]) == 2 and r["peak_rss_main_mib"] > 0 and r["peak_rss_worker_mib"] > 0 for r in rows)
    assert section["model_images_per_s"] > 0
    page = (tmp_path / "docs" / "results.md").read_text()
    assert "## Training data path" in page and f"in {CLASSES} class folders" in page
    assert list(tmp_path.iterdir()) == [tmp_path / "docs"]  # the generated folders are gone
