"""Deep exits that lose: the one rule by which `dynadapter train` and `dynadapter eval` warn.

A deeper exit is meant to answer at least as well as the exits before it: the cascade sends an image on only
where an earlier exit is unsure, and threshold 1 (full depth) is the dearest setting, meant as the most
accurate. Short runs (README, "Command line": ``--epochs 2 --img-size 56``) can leave the deep exits trained
less than the shallow ones, and then the dearest setting answers worst.

Two exits answer the same images, so their accuracies are compared paired, by McNemar's test (Q. McNemar,
"Note on the sampling error of the difference between correlated proportions or percentages",
Psychometrika 1947): only the images one exit gets right and the other wrong tell them apart. With ``b``
images that the earlier exit alone gets right and ``c`` that the later alone gets right, the later exit
*loses* when ``b - c > z * sqrt(b + c)``: the normal approximation of the test, one-sided, at ``z`` =
`NOISE_Z` = 2 (about a 2% chance of a warning between two exits that answer equally well). A smaller gap is
within the split's noise and is not reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

NOISE_Z = 2.0
#: Said once under the findings: where losing deep exits come from and what to do.
ADVICE = (
    "deep exits that lose are common after short runs (few --epochs, a small --img-size): train longer or at "
    "the default size, or pick the mode from `dynadapter eval`'s table rather than by its name"
)


@dataclass(frozen=True)
class ExitLoss:
    """A later exit answering worse than an earlier one by more than the noise (module docstring).

    ``earlier`` / ``later``: exit indices (0 = the first exit); ``*_block``: the backbone block each follows;
    ``*_accuracy``: fractions (0..1) of ``num_samples`` images; ``earlier_only`` (b) / ``later_only`` (c):
    images that exit alone answers right; ``last``: whether ``later`` is the model's last exit.
    """

    earlier: int
    later: int
    earlier_block: int
    later_block: int
    earlier_accuracy: float
    later_accuracy: float
    earlier_only: int
    later_only: int
    num_samples: int
    last: bool

    def message(self, split: str) -> str:
        """One line: both exits by block, both accuracies, the paired counts against the noise, and what it
        means for the thresholds and modes."""
        b, c = self.earlier_only, self.later_only
        return (
            f"exit {self.later} (after block {self.later_block}) answers {100 * self.later_accuracy:.1f}% of the "
            f"{self.num_samples} {split} images, worse than exit {self.earlier} (after block {self.earlier_block}) "
            f"at {100 * self.earlier_accuracy:.1f}%: exit {self.earlier} alone is right on {b} of them and exit "
            f"{self.later} alone on {c}, more than the noise ({b} - {c} = {b - c} > {NOISE_Z:g} * sqrt({b + c}) = "
            f"{NOISE_Z * math.sqrt(b + c):.1f}, McNemar's test); {self.meaning()}"
        )

    def meaning(self) -> str:
        """What the loss means for the thresholds and the named modes."""
        if not self.last:
            return (
                f"images sent on from exit {self.earlier} to exit {self.later} cost more there and are answered worse"
            )
        cheaper = (
            "threshold 0 (exit 0 alone, the cheapest setting)"
            if self.earlier == 0
            else f"stopping every image at exit {self.earlier}"
        )
        return (
            f"threshold 1 (full depth, the dearest setting) answers worse than {cheaper}, and `accurate` can cost "
            "more than `fast` for fewer right answers"
        )


def losing_exits(logits: Any, targets: Any, blocks: Sequence[int]) -> list[ExitLoss]:
    """Every exit that answers worse than an earlier exit by more than the noise, in exit order.

    ``logits``: [K, N, C] (numpy or CPU torch), one row per exit; ``targets``: [N] class ids; ``blocks``: the
    K block numbers the exits follow (the model's ``config.exits``), to name them. For each later exit that
    loses to one or more earlier exits, the finding names the most accurate of those (the earliest on ties).
    An empty list when no exit loses (a split of no images included). ValueError if ``blocks`` is not K long.
    """
    right = np.asarray(logits).argmax(-1) == np.asarray(targets)[None]  # [K, N]
    k, n = right.shape
    if len(blocks) != k:
        raise ValueError(f"{len(blocks)} block numbers for {k} exits")
    accuracy = right.mean(1) if n else np.zeros(k)
    findings = []
    for j in range(1, k):
        pairs = [(i, *_discordant(right[i], right[j])) for i in range(j)]
        losses = [(i, b, c) for i, b, c in pairs if b - c > NOISE_Z * math.sqrt(b + c)]
        if losses:
            i, b, c = max(losses, key=lambda t: (accuracy[t[0]], -t[0]))
            findings.append(
                ExitLoss(
                    i, j, int(blocks[i]), int(blocks[j]), float(accuracy[i]), float(accuracy[j]), b, c, n, j == k - 1
                )
            )
    return findings


def _discordant(earlier: np.ndarray, later: np.ndarray) -> tuple[int, int]:
    """(b, c): images only ``earlier`` answers right, images only ``later`` answers right."""
    return int((earlier & ~later).sum()), int((later & ~earlier).sum())


def health_record(findings: Sequence[ExitLoss], split: str, num_samples: int) -> dict[str, Any]:
    """The ``exit_health`` entry of calibration.json and eval_<split>.json: the rule (``z``), the split and its
    size, and ``losing_exits``: each finding's fields (`ExitLoss`) and its ``message``."""
    return {
        "rule": "mcnemar",
        "z": NOISE_Z,
        "split": split,
        "num_samples": num_samples,
        "losing_exits": [asdict(f) | {"message": f.message(split)} for f in findings],
    }


def warning_lines(record: dict[str, Any]) -> list[str]:
    """The warnings of an ``exit_health`` record: one a finding, then `ADVICE`; none where no exit loses."""
    messages = [f["message"] for f in record.get("losing_exits", [])]
    return [*messages, ADVICE] if messages else []
