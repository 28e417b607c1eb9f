"""Parity: how far exported segments, chained, are from the PyTorch model they came from.

One check for every runtime: the exporter runs it on the ONNX segments (onnxruntime) and
export/precisions.py on the OpenVINO IR ones, each passing its own ``chain``. The number is the
max |exported - PyTorch| over every exit's logits, on random images at each of
``PARITY_BATCH_SIZES``; the manifest records it and a model over ``PARITY_TOLERANCE`` is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dynadapter.contract import HEAD_GATE_INPUT, HIDDEN_OUTPUT, LOGITS_OUTPUT
from dynadapter.errors import ExportError
from dynadapter.models.dynamic_vit import DynamicViT

PARITY_BATCH_SIZES = (1, 5)
PARITY_TOLERANCE = 1e-4


def chained_onnx_logits(paths: Sequence[Path], images: np.ndarray) -> list[np.ndarray]:
    """Run every segment on every image (no early exit): the logits of each exit, every head on."""
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in paths]
    x, out = images, []
    for sess in sessions:
        names = [o.name for o in sess.get_outputs()]
        feed = {i.name: np.array(True) if i.name == HEAD_GATE_INPUT else x for i in sess.get_inputs()}
        result = dict(zip(names, sess.run(None, feed), strict=True))
        out.append(result[LOGITS_OUTPUT])
        x = result.get(HIDDEN_OUTPUT)
    return out


def parity_error(
    reference: DynamicViT,
    paths: Sequence[Path],
    size: tuple[int, int],
    seed: int = 0,
    chain: Callable[[Sequence[Path], np.ndarray], Sequence[np.ndarray]] = chained_onnx_logits,
) -> float:
    """Max |exported - PyTorch| over every exit's logits, for random images at each parity batch size.
    ``chain`` runs the exported segments (default: the ONNX ones on onnxruntime).

    Raises ExportError when either side gives a non-finite logit: NaN would compare as no
    difference at all, and a model that answers NaN cannot be served.
    """
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in PARITY_BATCH_SIZES:
        images = torch.randn(b, 3, *size, generator=g)
        with torch.no_grad():
            expected = [t.numpy() for t in reference.eval()(images)]
        got = chain(paths, images.numpy())
        for k, (e, o) in enumerate(zip(expected, got, strict=True)):
            if not (np.isfinite(e).all() and np.isfinite(o).all()):
                side = "PyTorch" if not np.isfinite(e).all() else "the exported segments"
                raise ExportError(
                    f"exit {k} gives non-finite logits ({side}): the checkpoint is broken, retrain with a lower --lr"
                )
            worst = max(worst, float(np.abs(e - o).max()))
    return worst
