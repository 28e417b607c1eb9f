"""`dynadapter export --precision fp32,int8`: OpenVINO IR fp32 and NNCF int8 segments, each calibrated on its own."""

import hashlib
import json

import numpy as np
import pytest

from dynadapter.contract import load_model
from dynadapter.errors import ExportError
from dynadapter.export.exporter import export_run
from dynadapter.export.precisions import CALIBRATION_IMAGES, chained_openvino_logits, parse_precisions, split_images
from dynadapter.models.flops import deployed_cumulative_gflops, early_heads_gflops
from dynadapter.training.calibration import calibrate
from dynadapter.training.run_dir import load_run
from tests.tiny import train_tiny_run

pytest.importorskip("nncf")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("precisions")
    run = train_tiny_run(root / "run", epochs=1)
    # A 1-epoch tiny model is near chance, so any int8 accuracy drop is allowed here; the bound is
    # checked on the demo model (docs/results.md).
    folder = export_run(run, root / "repo", name="tiny", version="1", precisions=["fp32", "int8"],
                        int8_max_accuracy_drop=1.0)  # fmt: skip
    return run, folder, json.loads((folder / "manifest.json").read_text())


def test_each_precision_has_its_files_with_sha256(exported) -> None:
    _, folder, manifest = exported
    assert set(manifest["precisions"]) == {"fp32-openvino", "int8-openvino"}
    for key, entry in manifest["precisions"].items():
        precision = key.split("-")[0]
        assert [s["file"] for s in entry["segments"]] == [f"segment_{k}.{precision}.xml" for k in range(4)]
        for segment in entry["segments"]:
            for name, digest in ((segment["file"], segment["sha256"]), (segment["weights"], segment["weights_sha256"])):
                assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert not (folder / ".ungated").exists()  # the gate-free sources are not left behind
    assert load_model(folder.parents[1], "tiny", precision="int8-openvino").precision == "int8-openvino"


def test_fp32_ir_matches_pytorch_and_int8_records_its_agreement(exported) -> None:
    _, _, manifest = exported
    fp32, int8 = manifest["precisions"]["fp32-openvino"]["parity"], manifest["precisions"]["int8-openvino"]["parity"]
    assert fp32["max_abs_diff"] <= 1e-4 and fp32["argmax_agreement"] == [1.0] * 4
    assert len(int8["argmax_agreement"]) == 4 and all(0 <= a <= 1 for a in int8["argmax_agreement"])
    assert int8["max_accuracy_drop"] == 1.0


def test_int8_is_calibrated_on_its_own_validation_logits(exported) -> None:
    run_dir, folder, manifest = exported
    run = load_run(run_dir)
    val_images, val_targets = split_images(run, "val")
    entry = manifest["precisions"]["int8-openvino"]
    logits = chained_openvino_logits([folder / s["file"] for s in entry["segments"]], val_images)
    own = calibrate(logits, val_targets, deployed_cumulative_gflops(run.model), early_heads_gflops(run.model))
    # OpenVINO's int8 kernels are not bitwise reproducible across compilations (threads), so an
    # image whose confidence sits on a threshold may move: the table agrees to within two images.
    n = len(val_targets)
    for row, expected in zip(entry["calibration"]["table"], own["calibration"]["table"], strict=True):
        assert row["threshold"] == expected["threshold"]
        assert abs(round(row["accuracy"] * n) - round(expected["accuracy"] * n)) <= 2  # in whole images
        # More images change exit than change answer: a fresh-clone run saw 0.021 (about 6 of 200
        # images leaving at another exit) between two compilations while accuracy moved <= 2 images.
        assert row["flops_fraction"] == pytest.approx(expected["flops_fraction"], abs=0.05)
    # The modes are rows of that table (the bootstrap's median choice), each with its spread.
    table = {row["threshold"]: row for row in entry["calibration"]["table"]}
    for mode in entry["modes"].values():
        row = table[mode["threshold"]]
        assert (mode["accuracy"], mode["flops_fraction"]) == (row["accuracy"], row["flops_fraction"])
        assert mode["spread"]["threshold_low"] <= mode["threshold"] <= mode["spread"]["threshold_high"]
    assert entry["calibration"]["num_samples"] == len(val_targets)
    # Not the fp32 table: int8 confidences differ, so the swept accuracies do too.
    assert [r["accuracy"] for r in entry["calibration"]["table"]] != [
        r["accuracy"] for r in manifest["calibration"]["table"]
    ]


def test_the_int8_calibration_set_is_recorded(exported) -> None:
    run_dir, _, manifest = exported
    record = manifest["precisions"]["int8-openvino"]["quantization"]
    images = record["calibration_set"]
    assert (images["data"], images["split"]) == ("builtin:digits", "train")
    assert images["num_images"] == CALIBRATION_IMAGES == len(set(images["indices"]))
    assert "nncf" in record and "openvino" in record


def test_unknown_precision_is_a_user_error() -> None:
    assert parse_precisions("int8") == ["fp32", "int8"]
    with pytest.raises(ExportError, match="choose from fp32, int8"):
        parse_precisions("fp32,int4")


def test_ir_segments_chain_like_the_manifest_says(exported) -> None:
    _, folder, manifest = exported
    images = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    logits = chained_openvino_logits([folder / s["file"] for s in manifest["precisions"]["fp32-openvino"]["segments"]],
                                     images)  # fmt: skip
    assert logits.shape == (4, 3, 10)
