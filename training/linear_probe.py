"""Linear probes of the exit heads' features, and LP-FT's probe-initialised heads.

A linear probe follows the linear-evaluation protocol of CLIP and DINOv2: each exit head's input
features (`ExitHead.features`: the pooled, normalised tokens after its block) are extracted once from
the training split, and a multinomial logistic regression (scikit-learn, L-BFGS) is fitted on them,
the L2 strength chosen on the validation split from ``C_GRID``. The fit is folded into a linear layer
on the raw features, so that the model answers as the regression does.

Two users: the accuracy suite's frozen-probe baseline (bench/suite/probe.py) and ``dynadapter train
--head-init probe`` (LP-FT: Kumar et al., "Fine-Tuning can Distort Pretrained Features and
Underperform Out-of-Distribution", ICLR 2022): the heads start as the probes of the frozen backbone,
so that fine-tuning begins from a good head instead of distorting the features to fit a random one.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from dynadapter.errors import ConfigError
from dynadapter.models.balanced_heads import ExitHead
from dynadapter.models.dynamic_vit import DynamicViT
from dynadapter.training.data import ImageDataset, stream

log = logging.getLogger(__name__)

#: Inverse L2 strengths tried per head (scikit-learn's C, on standardised features); a choice at
#: either end is logged as a warning (the best may lie beyond).
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
MAX_ITER = 1000
#: How far below every fitted bias an absent class's bias sits (its weights are zero).
ABSENT_CLASS_MARGIN = 1e4


def head_features(model: DynamicViT, data: ImageDataset, workers: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """What each exit head's classifier reads on a data set: float32 [N, D] per exit, and targets [N].
    Runs the model in eval mode (no dropout) on its own device; its train/eval mode is restored."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    features: list[list[torch.Tensor]] = [[] for _ in model.heads]
    targets = []
    with torch.inference_mode():
        for images, y in stream(data, workers):
            x = images.to(device)
            for k, head in enumerate(model.heads):
                x = model.first_stage(x) if k == 0 else model.stage_blocks(k)(x)
                features[k].append(head.features(x).float().cpu())
            targets.append(y)
    model.train(was_training)
    return [torch.cat(f).numpy() for f in features], torch.cat(targets).numpy()


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


def log_fit(k: int, choice: dict[str, Any]) -> None:
    """Log one head's chosen C and validation accuracy; a warning where C is at the end of the grid."""
    log.info("probe head %d: C=%g, validation accuracy %.4f", k, choice["C"], choice["val_acc"])
    if choice["C"] in (C_GRID[0], C_GRID[-1]):
        log.warning("probe head %d chose C=%g, at the end of the grid %s", k, choice["C"], C_GRID)


def probe_initialise(model: DynamicViT, train: ImageDataset, val: ImageDataset, workers: int) -> list[dict[str, Any]]:
    """LP-FT's start: every exit head answers as the linear probe of its features, fitted on ``train``
    (without its augmentation) with C chosen on ``val``. Returns per head the chosen ``C`` and its
    validation accuracy (fractions).

    The features are the model's as it stands: at initialisation the PETL branches are zero (adapter
    up-projections, LoRA's B and RepAdapter start at zero), so they are the frozen backbone's. Every head
    (built with ``linear_path``) gets the probe as its ``linear``, which reads the stage's pooled features
    (`ExitHead.features`: before a transformer head's blocks and the head's dropout, so that neither
    moves the probe), and its own classifier's last layer zeroed (``fc`` of a ``linear`` or
    ``transformer`` head, the MLP's output layer), so that the rest of the head adds nothing until it
    trains. Raises ConfigError for a head without a linear path, or an empty train or val split."""
    if not len(train) or not len(val):
        raise ConfigError("--head-init probe fits the heads on the train split and chooses C on val: both need images")
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            make_linear(head, k)
    # The probe fits the plain training images, as linear evaluation does: no augmentation draws.
    train_x, train_y = head_features(model, dataclasses.replace(train, augment=None), workers)
    val_x, val_y = head_features(model, val, workers)
    fits = []
    for k, head in enumerate(model.heads):
        classifier = head.linear
        assert isinstance(classifier, nn.Linear)  # make_linear refused a head without one
        weight, bias, choice = fit_head(train_x[k], train_y, val_x[k], val_y, classifier.out_features)
        with torch.no_grad():
            classifier.weight.copy_(torch.from_numpy(weight))
            classifier.bias.copy_(torch.from_numpy(bias))
        log_fit(k, choice)
        fits.append(choice)
    return fits


def make_linear(head: ExitHead, k: int) -> None:
    """Zero the last layer of the head's own classifier, so that only the linear path answers (see
    `probe_initialise`)."""
    if head.linear is None:
        raise ConfigError(f"exit {k}'s head has no linear path to hold the probe (HeadConfig.linear_path)")
    zero(head.fc[-1] if isinstance(head.fc, nn.Sequential) else head.fc)


def zero(layer: nn.Module) -> None:
    for p in layer.parameters():
        p.zero_()
