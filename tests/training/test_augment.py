"""The recipe's switches (training/augment.py): each does what its flag says, on the training split only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynadapter import cli
from dynadapter.contract import Preprocessing
from dynadapter.errors import ConfigError
from dynadapter.training.adaptive_prioritization import AdaptivePrioritization
from dynadapter.training.augment import auto_augment, batch_mixer, criterion, seeded, train_augmentation
from dynadapter.training.data import ImageDataset, load_raw, prepare_splits, stream
from dynadapter.training.data.splits import RawSplit
from dynadapter.training.distributed import World
from dynadapter.training.options import TrainOptions
from dynadapter.training.trainer import check_mixing
from tests.support.tiny import TINY_ARGS

PRE = Preprocessing.square(16, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def options(**switches: object) -> TrainOptions:
    return TrainOptions(data="builtin:digits", out=Path("-"), **switches)


def photos(n: int = 8) -> RawSplit:
    """Colour images at the model's size with structure (a gradient, a bright bar), all asymmetric."""
    rng = np.random.default_rng(0)
    pixels = []
    for _ in range(n):
        image = np.zeros((16, 16, 3), np.uint8)
        image[..., 0] = np.linspace(0, 255, 16, dtype=np.uint8)[None, :]
        image[..., 1] = rng.integers(0, 256, (16, 16))
        image[3:6, 2:9, 2] = 250
        pixels.append(image)
    return RawSplit(pixels, np.arange(n) % 2)


def dataset(source: RawSplit, seed: int = 0, **switches: object) -> ImageDataset:
    augment = train_augmentation(options(**switches), 16, PRE.mean) if switches else None
    return ImageDataset(source, PRE, 10**6, augment=augment, seed=seed)


def test_every_switch_is_off_by_default() -> None:
    opts = options()
    assert train_augmentation(opts, 16, PRE.mean) is None and batch_mixer(opts, 10) is None
    assert criterion(opts) is F.cross_entropy and not opts.augments and not opts.mixes


def test_hflip_1_gives_the_mirrored_image() -> None:
    source = photos(2)
    plain, flipped = dataset(source), dataset(source, hflip=1.0)
    for j in range(2):
        assert torch.equal(flipped[j][0], plain[j][0].flip(-1)) and flipped[j][1] == plain[j][1]
        assert not torch.equal(flipped[j][0], plain[j][0])


def test_randaugment_changes_the_image_reproducibly_per_seed_and_epoch() -> None:
    """timm applies each of RandAugment's 2 operations with probability 0.5: about 3 images in 4 change."""
    source = photos()
    plain, augmented = dataset(source), dataset(source, auto_augment="rand-m9-mstd0.5")
    first = [augmented[j][0] for j in range(len(source))]

    def changed(other: ImageDataset) -> int:
        return sum(not torch.equal(a, other[j][0]) for j, a in enumerate(first))

    assert changed(plain) >= len(source) // 2
    assert changed(augmented) == 0  # the same seed, epoch and image: the same draws
    assert changed(dataset(source, auto_augment="rand-m9-mstd0.5")) == 0
    augmented.set_epoch(1)
    assert changed(augmented) >= len(source) // 2
    assert changed(dataset(source, seed=1, auto_augment="rand-m9-mstd0.5")) >= len(source) // 2


def test_augmentation_does_not_depend_on_the_workers_nor_move_the_global_generators() -> None:
    augmented = dataset(photos(), hflip=0.5, crop_scale=[0.3, 1.0], auto_augment="trivial")
    state = torch.get_rng_state()
    in_process = torch.cat([images for images, _ in stream(augmented, 0, batch_size=4)])
    assert torch.equal(torch.get_rng_state(), state)
    in_worker = torch.cat([images for images, _ in stream(augmented, 1, batch_size=4)])
    assert torch.equal(in_process, in_worker)


def test_random_resized_crop_zooms_in_and_keeps_a_plain_colour_plain() -> None:
    source = photos(2)
    cropped = dataset(source, crop_scale=[0.25, 0.25])
    assert cropped[0][0].shape == (3, 16, 16) and not torch.equal(cropped[0][0], dataset(source)[0][0])
    grey = RawSplit([np.full((16, 16, 3), 90, np.uint8)], np.zeros(1, np.int64))
    assert torch.equal(dataset(grey, crop_scale=[0.25, 0.25])[0][0], dataset(grey)[0][0])


def test_only_the_training_split_is_augmented(tmp_path: Path) -> None:
    raw = load_raw("builtin:digits", 0)
    opts = TrainOptions(
        data="builtin:digits",
        out=tmp_path,
        img_size=16,
        workers=0,
        hflip=1.0,
        crop_scale=[0.3, 0.9],
        auto_augment="rand-m9-mstd0.5",
    )
    data = prepare_splits(raw, PRE, opts, tmp_path, World(), check_stop=lambda: None).datasets
    assert data["train"].augment is not None and data["val"].augment is None and data["test"].augment is None
    for split in ("val", "test"):
        image = raw.splits[split].load(0, PRE, opts.max_pixels)
        assert torch.equal(data[split][0][0], torch.from_numpy(image))
    train_image = raw.splits["train"].load(0, PRE, opts.max_pixels)
    assert not torch.equal(data["train"][0][0], torch.from_numpy(train_image))


def test_mixup_and_cutmix_give_soft_targets_summing_to_one_and_the_loss_takes_them() -> None:
    opts = options(mixup=0.8, cutmix=1.0, smoothing=0.1)
    mixer = batch_mixer(opts, 10)
    images, targets = torch.rand(8, 3, 16, 16), torch.arange(8)
    with seeded(0, 3):
        mixed, soft = mixer(images.clone(), targets)
    with seeded(0, 3):
        again, soft_again = mixer(images.clone(), targets)
    assert soft.shape == (8, 10) and torch.allclose(soft.sum(1), torch.ones(8))
    assert torch.equal(mixed, again) and torch.equal(soft, soft_again) and not torch.equal(mixed, images)
    assert soft.min() >= 0.1 / 10 - 1e-7  # smoothing folded in: no class below s / C
    # each row mixes its own class with the class of the reversed batch's image
    assert all(set(torch.topk(row, 2).indices.tolist()) == {i, 7 - i} for i, row in enumerate(soft))
    logits = [torch.randn(8, 10, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    loss_fn = AdaptivePrioritization(gamma=2.0, distill_weight=0.5, criterion=criterion(opts))
    loss, per_exit = loss_fn(logits, soft, 0.5)
    expected = [(-soft * F.log_softmax(z, -1)).sum(-1).mean().item() for z in logits]
    assert per_exit == pytest.approx(expected, rel=1e-6)
    weights = loss_fn.weights(0.5, 3)
    total = sum(w * e for w, e in zip(weights.tolist(), expected, strict=True)) + 0.5 * loss_fn.distillation(logits)
    assert loss.item() == pytest.approx(float(total), rel=1e-6)


def test_label_smoothing_changes_the_loss_by_exactly_s_times_the_uniform_term() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    targets = torch.tensor([0, 2])
    s = 0.2
    plain = criterion(options())(logits, targets).item()
    smoothed = criterion(options(smoothing=s))(logits, targets).item()
    rows = logits.tolist()
    log_z = [math.log(sum(math.exp(v) for v in row)) for row in rows]
    nll = [lz - row[t] for row, lz, t in zip(rows, log_z, targets.tolist(), strict=True)]
    uniform = [lz - sum(row) / 3 for row, lz in zip(rows, log_z, strict=True)]  # mean over classes of -log p
    assert plain == pytest.approx(sum(nll) / 2, rel=1e-6)
    assert smoothed - plain == pytest.approx(s * (sum(uniform) - sum(nll)) / 2, rel=1e-5)


def test_mixing_needs_even_whole_batches() -> None:
    mixer = batch_mixer(options(mixup=0.2), 10)
    with pytest.raises(ConfigError, match="even batch"):
        check_mixing(mixer, 15, 3)
    with pytest.raises(ConfigError, match="no whole batch"):
        check_mixing(mixer, 16, 0)
    check_mixing(None, 15, 0)


def test_an_auto_augment_spec_timm_does_not_know_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="rand-q9"):
        auto_augment("rand-q9", 16, PRE.mean, "bicubic")


def test_a_train_run_with_every_switch_records_them(tmp_path: Path) -> None:
    out = tmp_path / "run"
    switches = [
        *("--crop-scale", "0.5,1", "--hflip", "0.5", "--auto-augment", "rand-m9-mstd0.5"),
        *("--mixup", "0.2", "--cutmix", "1.0", "--smoothing", "0.1", "--head-dropout", "0.1"),
        *("--petl-dropout", "0.1", "--workers", "0", "--batch-size", "64"),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli.main(["train", "--data", "builtin:digits", "--out", str(out), *TINY_ARGS, *switches])
    finally:
        torch.set_num_threads(threads)
    config = json.loads((out / "config.json").read_text())
    recorded = {k: config["train"][k] for k in ("crop_scale", "hflip", "auto_augment", "mixup", "cutmix")}
    assert recorded == {
        "crop_scale": [0.5, 1.0],
        "hflip": 0.5,
        "auto_augment": "rand-m9-mstd0.5",
        "mixup": 0.2,
        "cutmix": 1.0,
    }
    assert (config["train"]["smoothing"], config["train"]["head_dropout"], config["train"]["petl_dropout"]) == (
        0.1,
        0.1,
        0.1,
    )
    assert config["model"]["head_dropout"] == 0.1 and config["model"]["petl_options"] == {"dropout": 0.1}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["step"] == 800 // 64  # the short last batch is dropped when batches are mixed
    assert math.isfinite(metrics[0]["loss"]) and (out / "calibration.json").is_file()


def test_an_augmented_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from dynadapter.training import run_dir as rd
    from dynadapter.training.trainer import train
    from tests.support.tiny import train_tiny_run

    switches = {"hflip": 0.5, "auto_augment": "rand-m9-mstd0.5", "mixup": 0.4, "cutmix": 1.0, "keep": "last"}
    whole = train_tiny_run(tmp_path / "whole", epochs=2, batch_size=128, **switches)
    original = rd.write_resume

    def interrupt_after_epoch_1(out: Path, tensors: dict, meta: dict) -> None:
        original(out, tensors, meta)
        raise KeyboardInterrupt

    monkeypatch.setattr(rd, "write_resume", interrupt_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_tiny_run(tmp_path / "cut", epochs=2, batch_size=128, **switches)
    monkeypatch.setattr(rd, "write_resume", original)
    recorded = json.loads((tmp_path / "cut" / "config.json").read_text())["train"]
    resumed = train(TrainOptions(**{**recorded, "resume": tmp_path / "cut"}))
    a, b = load_file(str(whole / "checkpoint.safetensors")), load_file(str(resumed / "checkpoint.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [
        [json.loads(line)["loss"] for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (whole, resumed)
    ]
    assert len(losses[0]) == 2 and losses[0] == losses[1]
