"""``dynadapter bench data``: memory and speed of the training data path as the folder grows.

For each count N, a folder of N camera-sized JPEGs in class folders is generated (copies of a few
distinct photos: every file is decoded for real; copies rather than links, since training reads a
file that links reach several times only once), and a
fresh process streams it as ``dynadapter train`` does: the screening epoch decodes every file
through ``Preprocessing.load`` into the uint8 cache, then cached epochs rebuild the model inputs.
Reported per N: peak resident memory of the main process and of a DataLoader worker, and images/s
of the decoding and the cached epochs; and, for comparison, images/s of training steps of the
model at the same resolution (random weights, same compute), which the cached epochs should
outpace by far. Target (issue 15): peak RSS at the largest N within 1.5x of that at the smallest.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dynadapter.bench.suite.rows import DataSection
from dynadapter.errors import ConfigError

RESULT_KEYS = ("data",)
DEFAULT_COUNTS = (1000, 10000, 50000)
CLASSES = 4
DISTINCT_PER_CLASS = 4


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="peak memory and images/s of the training data path, 1k to 50k images")
    p.add_argument("--counts", default=",".join(map(str, DEFAULT_COUNTS)), help="folder sizes (comma-separated)")
    p.add_argument("--photo-size", default="4032x3024", help="generated JPEGs, WIDTHxHEIGHT (default: a 12 MP phone)")
    p.add_argument("--img-size", type=int, default=112, help="training resolution (default: dynadapter train's)")
    p.add_argument("--epochs", type=int, default=3, help="epochs streamed: 1 decoding + cached ones (default: 3)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: dynadapter train's)")
    p.add_argument("--cache", choices=["memory", "disk"], default="disk", help="uint8 cache (default: disk)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--backbone", default="vit_small_patch14_dinov2", help="timm model timed for the comparison")
    p.add_argument("--backbone-arg", action="append", default=[], metavar="KEY=VALUE", help="timm argument")
    p.add_argument("--model-steps", type=int, default=5, help="training steps timed for the comparison (0: skip)")
    p.add_argument("--root", type=Path, help="where the folders are generated (default: a temporary folder)")
    p.add_argument("--docs", type=Path, default=Path("docs"), help="results page folder (default: docs)")
    p.add_argument("--no-write", action="store_true", help="print only; leave docs/results.* alone")
    p.add_argument("--note", default="", help="a sentence for the page on the conditions of the run")


def run(args: argparse.Namespace) -> None:
    counts = sorted({int(c) for c in args.counts.split(",") if c.strip()})
    width, _, height = args.photo_size.partition("x")
    if not counts or min(counts) < 2 * CLASSES or not (width.isdigit() and height.isdigit()):
        raise ConfigError(f"--counts {args.counts} / --photo-size {args.photo_size}: counts >= {2 * CLASSES}, WxH")
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        photos = distinct_photos(Path(tmp) / "photos", (int(width), int(height)))
        rows = [measure_in_fresh_process(folder_of(Path(tmp) / f"n{n}", photos, n), args) for n in counts]
    section = {
        "config": {k: v for k, v in vars(args).items() if k in SETTINGS},
        "rows": rows,
        "model_images_per_s": model_images_per_s(args) if args.model_steps else None,
        "note": args.note,
    }
    print(render_markdown({"data": section}))
    if not args.no_write:
        from dynadapter.bench.lab.results import update_results

        update_results(args.docs, {"data": section})


SETTINGS = ("photo_size", "img_size", "epochs", "workers", "cache", "batch_size", "backbone", "model_steps")


def distinct_photos(folder: Path, size: tuple[int, int]) -> list[list[Path]]:
    """DISTINCT_PER_CLASS JPEGs per class: smooth gradients in a class colour plus noise, like photos
    in size and in JPEG cost (quality 90)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : size[1], 0 : size[0]].astype(np.float32)
    out = []
    for c in range(CLASSES):
        files = []
        for k in range(DISTINCT_PER_CLASS):
            base = np.stack([(x / size[0] * 200 + 40 * c), (y / size[1] * 200 + 30 * k), np.full_like(x, 60 * c)], -1)
            pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
            path = folder / f"c{c}_{k}.jpg"
            Image.fromarray(pixels).save(path, quality=90)
            files.append(path)
        out.append(files)
    return out


def folder_of(root: Path, photos: list[list[Path]], n: int) -> Path:
    """``root/class_<c>/img_<i>.jpg``, n files in all, copies of the distinct photos (each its own file)."""
    for i in range(n):
        c = i % CLASSES
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos[c][(i // CLASSES) % DISTINCT_PER_CLASS], root / f"class_{c}" / f"img_{i:06d}.jpg")
    return root


def measure_in_fresh_process(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`measure` in a new interpreter, so that its peak memory is its own."""
    settings = {"folder": str(folder), **{k: getattr(args, k) for k in ("img_size", "epochs", "workers", "cache")}}
    code = (
        "import json, sys; from dynadapter.bench.suite.data import measure as m;"
        " print(json.dumps(m(**json.loads(sys.argv[1]))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"measuring {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def measure(folder: str, img_size: int, epochs: int, workers: int, cache: str, batch_size: int = 128) -> dict:
    """Stream the train split of ``folder`` as training does; returns images, seconds, images/s, peak RSS."""
    import numpy as np

    from dynadapter.contract import Preprocessing
    from dynadapter.training.data import ImageDataset, PixelCache, load_raw, screen, stream

    pre = Preprocessing.square(img_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    split = load_raw(folder).splits["train"]
    with tempfile.TemporaryDirectory() as tmp:
        path = None if cache == "memory" else Path(tmp) / "cache.u8"
        data = ImageDataset(split, pre, 40_000_000, PixelCache(len(split), pre.size, path))
        start = time.perf_counter()
        bad = screen(data, workers, False, np.arange(len(split)))
        seconds = [time.perf_counter() - start]
        loader = stream(data, workers, batch_size, shuffle=True)
        for _ in range(epochs - 1):
            start = time.perf_counter()
            for _images, _targets in loader:
                pass
            seconds.append(time.perf_counter() - start)
        del loader  # its workers end, so that their peak is counted below
        data.cache.close()
    mib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "images": len(split),
        "unusable": len(bad),
        "decode_images_per_s": round(len(split) / seconds[0], 1),
        "cached_images_per_s": round(len(split) / (sum(seconds[1:]) / max(1, len(seconds) - 1)), 1)
        if len(seconds) > 1
        else None,
        "seconds": [round(s, 2) for s in seconds],
        "peak_rss_main_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / mib, 1),
        "peak_rss_worker_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / mib, 1),
    }


def model_images_per_s(args: argparse.Namespace) -> float:
    """Images/s of training steps (adapters + exit heads, frozen backbone) at ``img_size``, random weights."""
    import torch

    from dynadapter.options import key_value
    from dynadapter.training.options import TrainOptions
    from dynadapter.training.trainer import build

    opts = TrainOptions(
        data="-",
        out=Path("-"),
        backbone=args.backbone,
        backbone_kwargs=dict(key_value(a) for a in args.backbone_arg),
        img_size=args.img_size,
    )
    model, _ = build(opts, CLASSES)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    images, targets = torch.randn(args.batch_size, 3, args.img_size, args.img_size), torch.arange(args.batch_size) % 4
    seconds = []
    for _ in range(args.model_steps + 1):  # the first step warms up and is not counted
        start = time.perf_counter()
        loss = sum(torch.nn.functional.cross_entropy(z, targets) for z in model(images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return round(args.batch_size * args.model_steps / sum(seconds[1:]), 1)


def render_markdown(results: dict[str, Any]) -> str:
    if not results.get("data"):
        return ""
    section = DataSection.model_validate(results["data"])
    cfg, rows = section.config, section.rows
    lines = [
        "## Training data path: memory and speed as the folder grows",
        "",
        f"`dynadapter bench data`: N generated {cfg.photo_size} JPEGs (quality 90) in {CLASSES} class folders, "
        f"the train split streamed at {cfg.img_size} px with {cfg.workers} DataLoader workers and the "
        f"{cfg.cache} uint8 cache: epoch 1 decodes every file, the next {cfg.epochs - 1} read the cache.",
        "",
        "| images (train split) | decode epoch (images/s) | cached epochs (images/s) | peak RSS main (MiB) | "
        "peak RSS per worker (MiB) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.images} | {r.decode_images_per_s} | {r.cached_images_per_s} | "
            f"{r.peak_rss_main_mib} | {r.peak_rss_worker_mib} |"
        )
    first, last = rows[0], rows[-1]
    total = [r.peak_rss_main_mib + cfg.workers * r.peak_rss_worker_mib for r in (first, last)]
    ratio = total[1] / total[0]
    verdict = "**met**" if ratio <= 1.5 else "missed"
    lines += [
        "",
        f"Peak RSS (main + {cfg.workers} x worker) at {last.images} images is {ratio:.2f}x that at "
        f"{first.images} (target <= 1.5x): {verdict}.",
    ]
    model = section.model_images_per_s
    if model:
        slowest = min(r.cached_images_per_s for r in rows if r.cached_images_per_s)
        lines.append(
            f"Training steps of `{cfg.backbone}` at {cfg.img_size} px (adapters + exit heads, batch "
            f"{cfg.batch_size}, random weights) ran at {model} images/s on the same machine: after the first "
            f"epoch the slowest cached epoch still streams {slowest / model:.0f}x faster than the model trains."
        )
    if section.note:
        lines += ["", section.note]
    return "\n".join(lines)
