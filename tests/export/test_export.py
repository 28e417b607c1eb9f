import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from dynadapter.export.exporter import export_run
from dynadapter.export.parity import chained_onnx_logits
from dynadapter.models.flops import exit_head_gflops
from dynadapter.training.run_dir import load_run
from tests.support.tiny import train_tiny_run

METHODS = ["adapter", "lora", "repadapter", "none"]


@pytest.fixture(scope="module", params=METHODS)
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    run = train_tiny_run(root / "run", petl=request.param, epochs=1)
    return run, export_run(run, root / "repo", name="tiny", version="3")


@pytest.mark.parametrize("batch", [1, 5])
def test_chained_segments_reproduce_pytorch_logits_at_every_exit(exported, batch: int) -> None:
    run, folder = exported
    model = load_run(run).model
    images = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = [t.numpy() for t in model(images)]
    got = chained_onnx_logits([folder / f"segment_{k}.onnx" for k in range(4)], images.numpy())
    for e, g in zip(expected, got, strict=True):
        assert g.shape == (batch, 10)
        assert np.abs(e - g).max() <= 1e-4


def test_segments_have_the_documented_inputs_outputs_and_dynamic_batch(exported) -> None:
    _, folder = exported
    for k in range(4):
        graph = onnx.load(str(folder / f"segment_{k}.onnx")).graph
        gate = ["need_logits"] if k < 3 else []  # early heads are gated; the last always runs
        assert [i.name for i in graph.input] == ["image" if k == 0 else "hidden_in", *gate]
        assert [o.name for o in graph.output] == (["logits"] if k == 3 else ["hidden", "logits"])
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_manifest_is_complete_and_consistent(exported) -> None:
    run, folder = exported
    m = json.loads((folder / "manifest.json").read_text())
    assert m["schema_version"] == 1 and (m["name"], m["version"]) == ("tiny", "3")
    assert m["labels"] == [str(i) for i in range(10)]
    assert m["preprocessing"]["size"] == [16, 16] and m["hidden_shape"] == [17, 32]
    segs = m["segments"]
    assert [s["after_block"] for s in segs] == [1, 2, 3, 4]
    for s in segs:
        assert s["sha256"] == hashlib.sha256((folder / s["file"]).read_bytes()).hexdigest()
    assert sum(s["gflops"] for s in segs) == pytest.approx(m["gflops_full"])
    assert segs[-1]["cumulative_gflops"] == pytest.approx(m["gflops_full"])
    assert m["parity"]["max_abs_diff"] <= 1e-4 and m["parity"]["batch_sizes"] == [1, 5]
    assert set(m["modes"]) == {"fast", "balanced", "accurate"}
    assert all(0 <= e["threshold"] <= 1 for e in m["modes"].values())
    assert m["calibration"]["table"] and m["calibration"]["budgets"]


def test_a_skipped_head_leaves_the_hidden_state_bitwise_unchanged(exported) -> None:
    run, folder = exported
    x = np.random.default_rng(0).normal(size=(3, 3, 16, 16)).astype(np.float32)
    for k in range(3):
        session = ort.InferenceSession(str(folder / f"segment_{k}.onnx"), providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        hidden, logits = session.run(["hidden", "logits"], {**feed, "need_logits": np.array(True)})
        skipped_hidden, skipped_logits = session.run(["hidden", "logits"], {**feed, "need_logits": np.array(False)})
        assert logits.shape == (3, 10) and skipped_logits.shape == (0, 10)
        np.testing.assert_array_equal(skipped_hidden, hidden)
        x = hidden


def test_manifest_prices_each_exit_head(exported) -> None:
    run, folder = exported
    segs = json.loads((folder / "manifest.json").read_text())["segments"]
    heads = exit_head_gflops(load_run(run).model)
    assert [s["head_gflops"] for s in segs] == pytest.approx(heads)
    assert all(0 < s["head_gflops"] < s["gflops"] for s in segs)


def test_export_refuses_a_run_without_calibration(exported, tmp_path) -> None:
    run, _ = exported
    (tmp_path / "r").mkdir()
    for name in ("config.json", "checkpoint.safetensors"):
        (tmp_path / "r" / name).write_bytes((run / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="calibration"):
        export_run(tmp_path / "r", tmp_path / "repo")


def test_a_merged_repadapter_costs_exactly_the_backbone_plus_heads(tmp_path) -> None:
    rep = export_run(train_tiny_run(tmp_path / "rep", petl="repadapter"), tmp_path / "repo", name="rep")
    none = export_run(train_tiny_run(tmp_path / "none", petl="none"), tmp_path / "repo", name="none")
    gflops = [[s["gflops"] for s in json.loads((f / "manifest.json").read_text())["segments"]] for f in (rep, none)]
    assert gflops[0] == gflops[1]
