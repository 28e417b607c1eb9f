"""training/corruptions.py on real images: an ELPV solar cell (grey) and a colour image built from it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dynadapter.contract import Preprocessing
from dynadapter.errors import ConfigError, DataError
from dynadapter.training.corruptions import KINDS, CorruptedDataset, assign, corrupt, image_seed, shifted_split
from dynadapter.training.data import ImageDataset, from_uint8, load_raw, to_uint8
from dynadapter.training.data.builtin import elpv_table


@pytest.fixture(scope="module")
def grey() -> np.ndarray:
    """One 300x300 ELPV electroluminescence image, downsampled to 64x64 (uint8)."""
    root, files, _, _ = elpv_table()
    with Image.open(root / files[0]) as image:
        return np.asarray(image.convert("L").resize((64, 64), Image.BILINEAR))


@pytest.fixture(scope="module")
def rgb(grey: np.ndarray) -> np.ndarray:
    """Three different views of the cell as the three channels, so the channels differ."""
    return np.stack([grey, grey.T, grey[::-1]], axis=-1).copy()


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference in grey levels."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes_and_shape_dtype_kept(kind: str, grey: np.ndarray, rgb: np.ndarray) -> None:
    for image in (grey, rgb):
        out = corrupt(image, kind, 3, seed=7)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert out.tobytes() == corrupt(image, kind, 3, seed=7).tobytes()
        assert mad(out, image) > 0.5, f"{kind} left the image (nearly) unchanged"


@pytest.mark.parametrize("kind", KINDS)
def test_severity_is_monotone_in_mean_absolute_difference(kind: str, grey: np.ndarray, rgb: np.ndarray) -> None:
    for image in (grey, rgb):
        diffs = [mad(corrupt(image, kind, s, seed=3), image) for s in range(1, 6)]
        assert all(a < b for a, b in zip(diffs, diffs[1:], strict=False)), f"{kind}: {diffs}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_changes_a_small_digit_at_severity_1(kind: str) -> None:
    """The suite's smallest images (8x8 scikit-learn digits) are shifted too, even at the mildest severity."""
    from sklearn.datasets import load_digits

    digit = (load_digits().images[0] * 255 / 16).round().astype(np.uint8)
    assert mad(corrupt(digit, kind, 1, seed=0), digit) > 0.5


def test_seed_draws_the_random_parts(grey: np.ndarray) -> None:
    noisy = [corrupt(grey, "gaussian_noise", 2, seed=s) for s in (0, 1)]
    assert noisy[0].tobytes() != noisy[1].tobytes()
    # contrast has no random part: the seed changes nothing
    assert corrupt(grey, "contrast", 2, seed=0).tobytes() == corrupt(grey, "contrast", 2, seed=1).tobytes()


def test_pil_in_pil_out(rgb: np.ndarray) -> None:
    out = corrupt(Image.fromarray(rgb), "rotate", 2, seed=0)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (64, 64)
    assert np.array_equal(np.asarray(out), corrupt(rgb, "rotate", 2, seed=0))


def test_contrast_keeps_the_mean_and_shrinks_the_spread(grey: np.ndarray) -> None:
    out = corrupt(grey, "contrast", 1, seed=0)  # factor 0.4
    assert out.mean() == pytest.approx(grey.mean(), abs=0.6)
    assert out.std() == pytest.approx(0.4 * grey.std(), abs=0.6)


def test_refusals(grey: np.ndarray) -> None:
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(grey, "fog", 1, seed=0)
    with pytest.raises(ConfigError, match="severity 6"):
        corrupt(grey, "jpeg", 6, seed=0)
    with pytest.raises(DataError, match="uint8"):
        corrupt(grey.astype(np.float32), "jpeg", 1, seed=0)


def test_shifted_split_mix_is_balanced_and_deterministic(grey: np.ndarray) -> None:
    kinds, severities = assign(70, seed=0)
    assert sorted(np.unique(kinds, return_counts=True)[1]) == [10] * 7
    assert sorted(np.unique(severities, return_counts=True)[1]) == [14] * 5
    images, labels = np.stack([np.roll(grey, i, axis=1) for i in range(14)]), np.arange(14) % 3
    a, b = shifted_split(images, labels, seed=5), shifted_split(images, labels, seed=5)
    assert a.images.shape == images.shape and a.images.dtype == np.uint8
    assert a.images.tobytes() == b.images.tobytes() and np.array_equal(a.kinds, b.kinds)
    assert np.array_equal(a.labels, labels)
    assert all(mad(x, y) > 0 for x, y in zip(a.images, images, strict=True))
    assert shifted_split(images, labels, seed=6).images.tobytes() != a.images.tobytes()
    # a list of differently sized images stays a list of those sizes
    ragged = shifted_split([grey, grey[:40, :50]], np.array([0, 1]), seed=5)
    assert [x.shape for x in ragged.images] == [(64, 64), (40, 50)]


def test_assign_draws_the_mix_the_shifted_split_always_drew() -> None:
    """The suite's records hold shifted-split numbers: the mix of every severity is drawn as before."""
    for n, seed in ((70, 0), (797, 3)):
        rng = np.random.default_rng([seed, n])
        kinds = np.array(KINDS)[rng.permutation(np.arange(n) % len(KINDS))]
        severities = rng.permutation(np.arange(n) % 5) + 1
        got = assign(n, seed)
        assert np.array_equal(got[0], kinds) and np.array_equal(got[1], severities)


def test_assign_balances_the_severities_it_is_given() -> None:
    kinds, severities = assign(28, seed=4, severities=(1, 2))
    assert sorted(np.unique(kinds, return_counts=True)[1]) == [4] * 7
    assert np.bincount(severities).tolist() == [0, 14, 14]
    with pytest.raises(ConfigError, match="choose from 1 to 5"):
        assign(10, seed=0, severities=(0, 6))


def test_one_copy_of_a_whole_split_is_its_shifted_copy_at_the_models_resolution() -> None:
    """`CorruptedDataset` over a split: image i at the model's input size, as uint8, corrupted by the kind
    and severity `assign` gives it with `image_seed(seed, i)`, normalised again (what the suite's shifted
    split has always fed the model)."""
    source = load_raw("builtin:digits", 0).splits["test"]
    pre = Preprocessing.square(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    shifted = CorruptedDataset(ImageDataset(source, pre, 10**6), seed=2)
    kinds, severities = assign(len(source), 2)
    assert len(shifted) == len(source) and np.array_equal(shifted.kinds, kinds)
    for i in (0, 5, len(source) - 1):
        pixels = to_uint8(source.load(i, pre, 10**6), pre)
        expected = from_uint8(corrupt(pixels, str(kinds[i]), int(severities[i]), image_seed(2, i)), pre)
        image, target = shifted[i]
        assert np.array_equal(image.numpy(), expected) and target == int(source.targets[i])
