"""Training and serving read every image a camera or an editor produces identically.

The generated corpus (bench/lab/photo_corpus.py: EXIF orientation, broken EXIF, progressive JPEG, 16-bit and
float samples, alpha, palette, 1-bit, LA, CMYK, ICC profiles, multi-frame, HEIC, AVIF, WebP, ...) is
laid out as a class folder; each file goes through the training data path (listed, streamed, then
served again from the uint8 cache) and through the service's path (its decode pool running
`Preprocessing.load`, as `Engine.prepare` does), and the tensors must be equal.
"""

import asyncio
from pathlib import Path

import numpy as np

from dynadapter.bench.lab.photo_corpus import corpus
from dynadapter.contract import Preprocessing
from dynadapter.service.decoding import DecodePool
from dynadapter.training.data import ImageDataset, PixelCache
from dynadapter.training.data.sources import list_files
from dynadapter.training.data.splits import FileSplit

MAX_PIXELS = 40_000_000


def served(pre: Preprocessing, data: list[bytes]) -> list[np.ndarray]:
    async def decode_all() -> list[np.ndarray]:
        pool = DecodePool(workers=1, queue=0)
        try:
            return [await pool.run(pre.load, item, MAX_PIXELS) for item in data]
        finally:
            pool.shutdown()

    return asyncio.run(decode_all())


def test_every_corpus_case_reads_the_same_in_training_and_serving(tmp_path: Path) -> None:
    cases = corpus()
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, case in enumerate(cases):  # no suffix: the content decides the format, in both paths
        (folder / f"{i:02d}-{case.name}").write_bytes(case.data)
    files = list_files(folder)
    assert len(files) == len(cases)  # no format the service accepts is left out of training
    pre = Preprocessing.square(32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    split = FileSplit(files, np.zeros(len(files), dtype=np.int64))
    dataset = ImageDataset(split, pre, MAX_PIXELS, PixelCache(len(split), pre.size))
    fresh = [dataset[i][0].numpy() for i in range(len(split))]
    cached = [dataset[i][0].numpy() for i in range(len(split))]
    service = served(pre, [path.read_bytes() for path in files])
    for path, a, b, c in zip(files, fresh, cached, service, strict=True):
        assert a.shape == (3, 32, 32), path.name
        np.testing.assert_array_equal(a, c, err_msg=path.name)
        np.testing.assert_array_equal(b, c, err_msg=path.name)
