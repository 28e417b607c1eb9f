"""Done-when of issue 15: a messy photo folder trains with one command, exports and serves, and the
server agrees with `dynadapter eval` on the run's test split."""

from __future__ import annotations

import math
from pathlib import Path

from fastapi.testclient import TestClient

from dynadapter import cli
from dynadapter.export.exporter import export_run
from dynadapter.service.main import create_app
from dynadapter.service.settings import Settings
from dynadapter.training import run_dir as rd
from dynadapter.training.evaluate import evaluate_run
from tests.support.folders import add_broken, add_litter, class_folder
from tests.support.service import wait_ready

TINY = ["--backbone", "vit_tiny_patch16_224", "--img-size", "16", "--exits", "2,4", "--epochs", "2"]
TINY += ["--backbone-arg", "depth=4", "--backbone-arg", "embed_dim=32", "--backbone-arg", "num_heads=2"]
TINY += ["--backbone-arg", "patch_size=4", "--lr", "1e-2", "--batch-size", "16", "--workers", "1"]


def test_a_messy_folder_trains_exports_serves_and_agrees_with_eval(tmp_path: Path) -> None:
    photos, run, repo = tmp_path / "photos", tmp_path / "run", tmp_path / "repo"
    class_folder(photos, {"cat": 30, "dog": 30, "owl": 30})
    add_litter(photos, "dog")
    add_broken(photos, "cat")
    cli.main(["train", "--data", str(photos), "--out", str(run), *TINY])
    report = evaluate_run(run, split="test")
    export_run(run, repo, name="photos", version="1")
    test_split = rd.read_split(run, "test") or []
    assert len(test_split) == report["num_samples"] > 0
    settings = Settings(model_repo=repo, model_name="photos", providers="cpu", intra_op_threads=1, max_wait_ms=2.0)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        for mode in ("fast", "accurate"):
            correct = 0
            for path, label in test_split:
                response = client.post(f"/classify?mode={mode}", files={"file": ("photo", Path(path).read_bytes())})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["label"] in ("cat", "dog", "owl") and math.isfinite(body["confidence"])
                correct += body["label"] == label
            assert abs(correct / len(test_split) - report["modes"][mode]["accuracy"]) <= 0.005, mode
