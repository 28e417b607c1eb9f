"""The exit-head gate on a hand-built segment: what moves into the If, and what is refused."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dynadapter.export.head_gate import gate_exit_head

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def segment(head: bool = True) -> onnx.ModelProto:
    """x [B, 4] -> hidden = tanh(x); logits = hidden @ W (or, without a head, one Split node makes
    both outputs, so that no node serves the logits alone)."""
    if head:
        nodes = [helper.make_node("Tanh", ["x"], ["hidden"]), helper.make_node("MatMul", ["hidden", "w"], ["logits"])]
    else:
        nodes = [helper.make_node("Split", ["x"], ["hidden", "logits"], axis=1, num_outputs=2)]
    classes = 3 if head else 2
    graph = helper.make_graph(
        nodes,
        "segment",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", 4 if head else 2]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
        ],
        [numpy_helper.from_array(W, "w")] if head else [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_the_head_moves_into_the_if_and_the_trunk_stays() -> None:
    gated = gate_exit_head(segment())
    onnx.checker.check_model(gated, full_check=True)
    assert [n.op_type for n in gated.graph.node] == ["Tanh", "If"]
    branch = next(a.g for a in gated.graph.node[1].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["MatMul"]
    session = ort.InferenceSession(gated.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    hidden, logits = session.run(None, {"x": x, "need_logits": np.array(True)})
    np.testing.assert_allclose(logits, np.tanh(x) @ W, rtol=1e-6)
    hidden_off, logits_off = session.run(None, {"x": x, "need_logits": np.array(False)})
    np.testing.assert_array_equal(hidden_off, hidden)
    assert logits_off.shape == (0, 3)


def test_a_segment_whose_logits_need_no_head_is_refused() -> None:
    with pytest.raises(ValueError, match="nothing to gate"):
        gate_exit_head(segment(head=False))
