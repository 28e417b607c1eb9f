"""The frozen probe's heads: a logistic regression per block on the frozen backbone's features.

The accuracy suite's strongest cheap baseline is a linear classifier on the frozen backbone at its
best block. Trained by SGD in the suite's short budget (8 epochs at the PETL methods' learning
rate), linear heads on frozen features stay far from converged (digits: 69.5% at the last block,
where every PETL method reaches 97-98%), which would make the baseline a straw man. So the probe
follows the linear-evaluation protocol of CLIP and DINOv2 instead: each head's input features (the
pooled, normalised tokens after its block) are extracted once from the training split, and its
``fc`` is fitted by multinomial logistic regression (scikit-learn, L-BFGS), the L2 strength chosen
on the validation split from ``C_GRID``. The fitted weights go back into the run's checkpoint, so
evaluation, calibration and the shifted split treat the probe like any other run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynadapter.errors import ConfigError
from dynadapter.training import run_dir as rd
from dynadapter.training.data import ImageDataset, run_split, stream
from dynadapter.training.evaluate import recalibrate_run

log = logging.getLogger(__name__)

#: Inverse L2 strengths tried per head (scikit-learn's C, on standardised features); a choice at
#: either end is logged as a warning (the best may lie beyond).
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
MAX_ITER = 1000
#: How far below every fitted bias an absent class's bias sits (its weights are zero).
ABSENT_CLASS_MARGIN = 1e4


def fit_probe_heads(run_dir: Path) -> list[dict[str, Any]]:
    """Replace every linear exit head's ``fc`` of the run by a logistic regression fitted on the
    train split (C chosen on val), save the checkpoint and recalibrate. Returns per head the chosen
    ``C`` and its validation accuracy (fractions). The heads' norms stay as training left them."""
    run = rd.load_run(run_dir)
    model = run.model.eval()
    train_x, train_y = head_inputs(run, "train")
    val_x, val_y = head_inputs(run, "val")
    fits = []
    for k, head in enumerate(model.heads):
        if not isinstance(head.fc, torch.nn.Linear):
            raise ConfigError(f"the frozen probe needs linear heads; exit {k} has {type(head.fc).__name__}")
        weight, bias, choice = fit_head(train_x[k], train_y, val_x[k], val_y, head.fc.out_features)
        with torch.no_grad():
            head.fc.weight.copy_(torch.from_numpy(weight))
            head.fc.bias.copy_(torch.from_numpy(bias))
        fits.append(choice)
        log.info("probe head %d: C=%g, validation accuracy %.4f", k, choice["C"], choice["val_acc"])
        if choice["C"] in (C_GRID[0], C_GRID[-1]):
            log.warning("probe head %d chose C=%g, at the end of the grid %s", k, choice["C"], C_GRID)
    rd.save_checkpoint(run_dir, model)
    recalibrate_run(run_dir)
    return fits


def head_inputs(run: rd.Run, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """What each exit head's ``fc`` sees on a split: float32 [N, width] per head, and targets [N]."""
    source = run_split(run.path or Path("."), run.config, split)
    max_pixels = run.config.train.max_pixels
    captured: list[list[torch.Tensor]] = [[] for _ in run.model.heads]
    hooks = [
        head.fc.register_forward_pre_hook(lambda _, inputs, k=k: captured[k].append(inputs[0].detach()))
        for k, head in enumerate(run.model.heads)
    ]
    targets = []
    try:
        with torch.inference_mode():
            for images, y in stream(ImageDataset(source, run.preprocessing, max_pixels), 0):
                run.model(images)
                targets.append(y)
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.cat(c).float().numpy() for c in captured], torch.cat(targets).numpy()


def fit_head(
    x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One head's logistic regression on features ``x`` [N, width] and targets ``y`` [N], as ``fc``
    weights [num_classes, width] and bias [num_classes] on the raw features (the standardisation
    folded in), and its choice of C (the smallest wins ties). A class absent from ``y`` gets a row
    whose logit is always the lowest, so that it is never predicted."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    x_std, val_std = scaler.transform(x), scaler.transform(val_x)
    fits = [LogisticRegression(C=c, max_iter=MAX_ITER).fit(x_std, y) for c in C_GRID]
    accs = [float((clf.predict(val_std) == val_y).mean()) for clf in fits]
    best = int(np.argmax(accs))
    clf = fits[best]
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2:  # one score s = w.x + b for the second class: softmax([-s/2, s/2]) = sigmoid(s)
        coef, intercept = np.vstack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    full_weight = np.zeros((num_classes, x.shape[1]), np.float32)
    full_bias = np.full(num_classes, bias.min() - ABSENT_CLASS_MARGIN, np.float32)
    full_weight[clf.classes_], full_bias[clf.classes_] = weight, bias
    return full_weight, full_bias, {"C": C_GRID[best], "val_acc": accs[best]}
