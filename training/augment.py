"""The training recipe's switches that change what the model sees: augmentation, mixing, smoothing.

Augmentation (``--crop-scale``, ``--hflip``, ``--auto-augment``) is timm's (and torchvision's
TrivialAugmentWide), applied to the training split only: the resized uint8 image in the cache, at the
model's input size, goes through `train_augmentation` and then the same ``Preprocessing`` as every
other split, so that validation, test and calibration see exactly what the service sees. Each image's
random draws are seeded by (seed, epoch, image), whatever the number of DataLoader workers, so a run
and its ``--resume`` see the same augmented images.

Mixup / cutmix (timm's ``Mixup``) mix whole training batches and turn the targets into soft labels
(rows summing to 1, label smoothing folded in); the exits' loss is then timm's
``SoftTargetCrossEntropy``. Without mixing, ``--smoothing`` uses timm's ``LabelSmoothingCrossEntropy``.
Self-distillation (training/adaptive_prioritization.py) needs no targets: it works with either.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import Mixup
from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torchvision import transforms

from dynadapter.errors import ConfigError
from dynadapter.training.options import TrainOptions

#: A loss of one exit: logits [N, C] and targets ([N] class ids, or [N, C] soft labels) -> scalar.
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Augmentation = Callable[[Image.Image], Image.Image]


@contextmanager
def seeded(*key: int) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU generators seeded from ``key`` inside the block (timm's
    transforms and Mixup draw from them), and restored after it: nothing else's draws change."""
    seed = int(np.random.SeedSequence([abs(k) for k in key]).generate_state(1)[0])
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def auto_augment(spec: str, size: int, mean: tuple[float, ...], interpolation: str) -> Augmentation:
    """timm's RandAugment / AugMix / AutoAugment from its spec string (hyper-parameters as timm's own
    ``transforms_imagenet_train`` sets them), or torchvision's TrivialAugmentWide for ``trivial``."""
    fill = tuple(min(255, round(255 * m)) for m in mean)
    if spec == "trivial":
        return transforms.TrivialAugmentWide(fill=list(fill))
    params = {"translate_const": int(size * 0.45), "img_mean": fill, "interpolation": str_to_pil_interp(interpolation)}
    try:
        if spec.startswith("rand"):
            return rand_augment_transform(spec, params)
        if spec.startswith("augmix"):
            return augment_and_mix_transform(spec, {**params, "translate_pct": 0.3})
        return auto_augment_transform(spec, params)
    except (AssertionError, KeyError, ValueError) as err:
        raise ConfigError(f"--auto-augment {spec}: not a spec timm knows ({err or 'bad section'})") from None


def train_augmentation(
    opts: TrainOptions, size: int, mean: tuple[float, ...], interpolation: str = "bicubic"
) -> Augmentation | None:
    """The training images' augmentation, PIL image -> PIL image at ``size`` (None: every switch off)."""
    steps: list[Augmentation] = []
    if opts.crop_scale:
        steps.append(RandomResizedCropAndInterpolation(size, scale=tuple(opts.crop_scale), interpolation=interpolation))
    if opts.hflip:
        steps.append(transforms.RandomHorizontalFlip(opts.hflip))
    if opts.auto_augment:
        steps.append(auto_augment(opts.auto_augment, size, mean, interpolation))
    return transforms.Compose(steps) if steps else None


def batch_mixer(opts: TrainOptions, num_classes: int) -> Mixup | None:
    """timm's Mixup for ``--mixup`` / ``--cutmix`` (label smoothing folded into its soft targets)."""
    if not opts.mixes:
        return None
    return Mixup(
        mixup_alpha=opts.mixup, cutmix_alpha=opts.cutmix, label_smoothing=opts.smoothing, num_classes=num_classes
    )


def criterion(opts: TrainOptions) -> Criterion:
    """Each exit's loss: soft-target cross-entropy after mixing, label-smoothed or plain otherwise."""
    if opts.mixes:
        return SoftTargetCrossEntropy()
    if opts.smoothing:
        return LabelSmoothingCrossEntropy(opts.smoothing)
    return F.cross_entropy
