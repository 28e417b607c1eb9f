"""Small generated image folders as users have them: layouts, litter and broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dynadapter.training.options import TrainOptions
from tests.support.tiny import TINY_BACKBONE

#: One colour per class, so that a tiny model learns them in a few steps.
COLOURS = {"cat": (220, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 220)}


def image_bytes(label: str, seed: int, size: tuple[int, int] = (20, 14), fmt: str = "PNG") -> bytes:
    """A (width, height) image of the class colour with a little noise."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[label]) + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def class_folder(root: Path, counts: dict[str, int], start: int = 0) -> list[Path]:
    """``root/<class>/img_<i>.png`` (every third a JPEG); returns the files written."""
    files = []
    for c, (label, n) in enumerate(counts.items()):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            fmt = "JPEG" if i % 3 == 0 else "PNG"
            path = root / label / f"img_{i:03d}.{fmt.lower()}"
            path.write_bytes(image_bytes(label, 1000 * c + i, fmt=fmt))
            files.append(path)
    return files


def add_litter(root: Path, label: str) -> list[Path]:
    """What macOS, Windows and Jupyter leave behind: never images, never classes, never listed."""
    litter = [
        root / ".ipynb_checkpoints" / "img_000-checkpoint.png",
        root / label / ".ipynb_checkpoints" / "img_000-checkpoint.png",
        root / "__MACOSX" / label / "._img_001.png",
        root / label / "._img_001.png",
        root / label / "Thumbs.db",
        root / label / "desktop.ini",
        root / label / ".DS_Store",
    ]
    for path in litter:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes(label, 7) if path.suffix == ".png" else b"\x00\x05\x16\x07junk")
    return litter


def add_broken(root: Path, label: str) -> dict[str, Path]:
    """A truncated PNG, an empty file and a text file in a class folder: each one unusable."""
    whole = image_bytes(label, 99)
    broken = {
        "truncated": root / label / "truncated.png",
        "empty": root / label / "empty.jpg",
        "text": root / label / "notes.txt",
    }
    broken["truncated"].write_bytes(whole[: len(whole) // 2])
    broken["empty"].write_bytes(b"")
    broken["text"].write_text("shot on a phone\n")
    return broken


def tiny_options(data: Path, out: Path, **overrides: object) -> TrainOptions:
    """`dynadapter train` options for a tiny random ViT on a small folder (2 epochs at 16 px), with overrides."""
    values: dict[str, object] = dict(
        data=str(data),
        out=out,
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=TINY_BACKBONE,
        exits=[2, 4],
        img_size=16,
        epochs=2,
        batch_size=16,
        lr=1e-2,
        workers=0,
        progress=False,
    )
    return TrainOptions(**(values | overrides))  # type: ignore[arg-type]
