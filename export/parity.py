"""Parity: how far exported segments, chained, are from the PyTorch model they came from.

One check for every runtime: the exporter runs it on the ONNX segments (onnxruntime) and
export/precisions.py on the OpenVINO IR ones, each passing its own ``chain``. It measures, for each
exit, the max |exported - PyTorch| over its logits and the largest |PyTorch logit| (its scale), on
random images at each of ``PARITY_BATCH_SIZES``; the manifest records both, and a model is refused
where an exit's difference exceeds ``PARITY_TOLERANCE * max(1, its scale)`` (`Parity`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dynadapter.contract import HEAD_GATE_INPUT, HIDDEN_OUTPUT, LOGITS_OUTPUT
from dynadapter.errors import ExportError
from dynadapter.models.dynamic_vit import DynamicViT

PARITY_BATCH_SIZES = (1, 5)
#: The bound on |exported - PyTorch| relative to the logits' scale (absolute for logits within +-1).
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    """Each exit's max |exported - PyTorch| over its logits (``exit_max_abs_diff`` [K]) and its largest
    |PyTorch logit| (``logit_scale`` [K]), on the parity images.

    The bound is per exit, ``tolerance * max(1, logit_scale[k])``: float32 rounding error grows with
    the values summed, so logits in the hundreds (a probe-initialised head, LP-FT, on standardised
    features: training/linear_probe.py) differ by more than 1e-4 in a correct export, while one exit's
    large logits must not loosen the check of another whose logits are small (an overall scale would).
    Logits within +-1 keep the absolute bound.
    """

    exit_max_abs_diff: list[float]
    logit_scale: list[float]

    @property
    def max_abs_diff(self) -> float:
        """The largest difference over every exit (the manifest's ``max_abs_diff``)."""
        return max(self.exit_max_abs_diff)

    def bounds(self, tolerance: float) -> list[float]:
        """Each exit's bound on |exported - PyTorch|: ``tolerance * max(1, logit_scale[k])``."""
        return [tolerance * max(1.0, scale) for scale in self.logit_scale]

    def relative_diff(self) -> float:
        """The worst exit's difference over ``max(1, its scale)``: what ``tolerance`` bounds."""
        return max(d / max(1.0, s) for d, s in zip(self.exit_max_abs_diff, self.logit_scale, strict=True))

    def check(self, tolerance: float, what: str) -> None:
        """ExportError naming the worst exit, its difference, its scale and its bound where any exit's
        difference exceeds its bound; ``what`` names the segments ("exported segments")."""
        bounds = self.bounds(tolerance)
        k = max(range(len(bounds)), key=lambda i: self.exit_max_abs_diff[i] / bounds[i])
        if self.exit_max_abs_diff[k] > bounds[k]:
            raise ExportError(
                f"{what} differ from PyTorch by {self.exit_max_abs_diff[k]:.2e} at exit {k}, over its bound "
                f"{bounds[k]:.2e} ({tolerance:g} x max(1, largest |PyTorch logit| {self.logit_scale[k]:.3g}))"
            )

    def record(self, tolerance: float | None) -> dict[str, object]:
        """The manifest's ``parity`` fields: ``max_abs_diff`` (over every exit), per exit
        ``exit_max_abs_diff`` and ``logit_scale``, ``relative_diff``, ``batch_sizes`` and the ``tolerance``
        applied (None where the precision is not bound on logits: int8)."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "exit_max_abs_diff": list(self.exit_max_abs_diff),
            "logit_scale": list(self.logit_scale),
            "relative_diff": self.relative_diff(),
            "batch_sizes": list(PARITY_BATCH_SIZES),
            "tolerance": tolerance,
        }


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
) -> Parity:
    """Each exit's max |exported - PyTorch| and largest |PyTorch logit| over random images (standard
    normal, [B, 3, *size], seeded by ``seed``) at each parity batch size. ``chain`` runs the exported
    segments (default: the ONNX ones on onnxruntime) and returns each exit's logits [B, C].

    Raises ExportError when either side gives a non-finite logit: NaN would compare as no
    difference at all, and a model that answers NaN cannot be served.
    """
    g = torch.Generator().manual_seed(seed)
    diffs = [0.0] * reference.num_exits
    scales = [0.0] * reference.num_exits
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
            diffs[k] = max(diffs[k], float(np.abs(e - o).max()))
            scales[k] = max(scales[k], float(np.abs(e).max()))
    return Parity(diffs, scales)
