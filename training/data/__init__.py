"""Training data: a folder as users have it, a CSV manifest, or ``builtin:<name>``; split, screened, streamed.

- `splits`: what a data set is once read (`RawDataset`, its `FileSplit` / `RawSplit`), stratified orders.
- `builtin`: the builtin data sets (``BUILTIN_DATASETS``), from packages that ship their images.
- `sources`: folders and CSV manifests, the layout rules (what is a split, class folders, links read
  once), `load_raw`, few-shot draws and the checks that a classifier can be trained.
- `cache`: the uint8 pixel cache (shared memory or a file in the run directory) and its removal.
- `loading`: `ImageDataset` streams a split, `screen` finds unusable images, `stream` is the DataLoader.
- `run_splits`: a run's splits, prepared for training (`read_dataset`, `prepare_splits`) or read back
  from its run directory (`run_split`).

The names below are what the rest of the project uses.
"""

from dynadapter.training.data.builtin import BUILTIN_DATASETS, BUILTIN_VAL_IMAGES
from dynadapter.training.data.cache import PixelCache, from_uint8, to_uint8
from dynadapter.training.data.loading import ImageDataset, screen, stream
from dynadapter.training.data.run_splits import Splits, prepare_splits, read_dataset, run_split
from dynadapter.training.data.sources import load_raw

__all__ = [
    "BUILTIN_DATASETS",
    "BUILTIN_VAL_IMAGES",
    "ImageDataset",
    "PixelCache",
    "Splits",
    "from_uint8",
    "load_raw",
    "prepare_splits",
    "read_dataset",
    "run_split",
    "screen",
    "stream",
    "to_uint8",
]
