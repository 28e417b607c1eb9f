"""The frozen probe's heads: a logistic regression per block on the frozen backbone's features.

The accuracy suite's strongest cheap baseline is a linear classifier on the frozen backbone at its
best block. Trained by SGD in the suite's short budget (8 epochs at the PETL methods' learning
rate), linear heads on frozen features stay far from converged (digits: 69.5% at the last block,
where every PETL method reaches 97-98%), which would make the baseline a straw man. So the probe
follows the linear-evaluation protocol of CLIP and DINOv2 instead: each head's input features (the
pooled, normalised tokens after its block) are extracted once from the training split, and its
``fc`` is fitted by multinomial logistic regression (scikit-learn, L-BFGS), the L2 strength chosen
on the validation split from ``C_GRID`` (training/linear_probe.py, which LP-FT's probe-initialised
heads share). The fitted weights go back into the run's checkpoint, so evaluation, calibration and
the shifted split treat the probe like any other run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynadapter.errors import ConfigError
from dynadapter.training import run_dir as rd
from dynadapter.training.data import ImageDataset, run_split
from dynadapter.training.evaluate import recalibrate_run
from dynadapter.training.linear_probe import fit_head, head_features, log_fit

log = logging.getLogger(__name__)


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
        log_fit(k, choice)
    rd.save_checkpoint(run_dir, model)
    recalibrate_run(run_dir)
    return fits


def head_inputs(run: rd.Run, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """What each exit head's classifier sees on a split of the run: float32 [N, width] per head, and targets [N]."""
    source = run_split(run.path or Path("."), run.config, split)
    return head_features(run.model, ImageDataset(source, run.preprocessing, run.config.train.max_pixels))
