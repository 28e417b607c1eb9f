"""Exit-head gate: let the server skip an exit head that no image in the batch can use.

An exported segment computes the stage's blocks (``hidden``) and the exit head on top (``logits``).
onnxruntime runs every node of a graph whatever outputs are fetched, so a request at threshold 1,
which can never leave early, would still pay for every early head (8% of the demo model's FLOPs;
its first head is a transformer block). The gate moves the head's nodes into the ``then`` branch
of an ONNX ``If`` on a boolean scalar input ``need_logits``; the ``else`` branch yields an empty
``[0, num_classes]`` tensor. Fed ``true``, the segment is exactly the one docs/model-repository.md describes; the
segment runner feeds ``false`` when every image in flight has a threshold >= 1 at that exit.

``need_logits`` is a required input, not one with a default (an initializer of the same name):
onnxruntime's IOBinding, which keeps hidden states on the GPU between segments, cannot bind an
overridable initializer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dynadapter.contract.model_repository import HEAD_GATE_INPUT as FLAG

_HEAD_OUT = "exit_head_logits"
_SKIPPED_OUT = "exit_head_skipped"


def _ancestors(graph: onnx.GraphProto, output: str) -> set[int]:
    """Indices of the nodes that ``output`` depends on."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    seen: set[int] = set()
    todo = [output]
    while todo:
        i = producer.get(todo.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        todo.extend(graph.node[i].input)
    return seen


def gate_exit_head(model: onnx.ModelProto, hidden: str = "hidden", logits: str = "logits") -> onnx.ModelProto:
    """Return a copy of a segment ``-> (hidden, logits)`` whose head runs only when ``need_logits``."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    trunk = _ancestors(graph, hidden)
    head = sorted(_ancestors(graph, logits) - trunk)
    if not head:
        raise ValueError(f"no node computes {logits!r} apart from {hidden!r}: nothing to gate")
    out = next(o for o in graph.output if o.name == logits)
    num_classes = out.type.tensor_type.shape.dim[-1].dim_value
    if num_classes <= 0:
        raise ValueError(f"{logits!r} has no static class dimension")

    head_nodes = [graph.node[i] for i in head]
    for node in head_nodes:  # ONNX forbids a branch to define a name of the outer scope
        node.output[:] = [_HEAD_OUT if name == logits else name for name in node.output]
    then_branch = helper.make_graph(
        head_nodes, "exit_head", [], [helper.make_tensor_value_info(_HEAD_OUT, TensorProto.FLOAT, None)]
    )
    empty = numpy_helper.from_array(np.zeros((0, num_classes), np.float32), _SKIPPED_OUT)
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], [_SKIPPED_OUT], value=empty)],
        "exit_head_skipped",
        [],
        [helper.make_tensor_value_info(_SKIPPED_OUT, TensorProto.FLOAT, None)],
    )
    gate = helper.make_node(
        "If", [FLAG], [logits], name="exit_head_gate", then_branch=then_branch, else_branch=else_branch
    )

    head_set = set(head)
    kept = [node for i, node in enumerate(graph.node) if i not in head_set]
    del graph.node[:]
    graph.node.extend([*kept, gate])
    graph.input.append(helper.make_tensor_value_info(FLAG, TensorProto.BOOL, []))
    # The logits' row count is the batch's when the head runs, 0 when it is skipped.
    out.type.tensor_type.shape.dim[0].Clear()
    out.type.tensor_type.shape.dim[0].dim_param = "logit_rows"
    names_in_head = {name for node in head_nodes for name in node.output}
    keep_info = [vi for vi in graph.value_info if vi.name not in names_in_head]
    del graph.value_info[:]
    graph.value_info.extend(keep_info)
    return model
