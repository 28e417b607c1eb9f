"""The one contract between training and serving, torch-free: the model repository's format
(manifest schema and version, segment input/output names, checksums), image decoding and
preprocessing, and the numerics both sides share. The exporter writes manifests through
`Manifest`, the service reads them through it: docs/model-repository.md describes the format.
"""

from dynadapter.contract.images import (
    ACCEPTED_FORMATS,
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    pil_pixel_limit,
    preprocess,
)
from dynadapter.contract.model_repository import (
    HEAD_GATE_INPUT,
    HIDDEN_INPUT,
    HIDDEN_OUTPUT,
    IMAGE_INPUT,
    LOGITS_OUTPUT,
    MODE_NAMES,
    SCHEMA_VERSION,
    Calibration,
    Manifest,
    ModelLoadError,
    ModelVersion,
    Preprocessing,
    Segment,
    ThresholdChoice,
    load_model,
    new_manifest,
    read_manifest,
    segment_io,
    write_manifest,
)
from dynadapter.contract.numerics import confidence, sha256_file, softmax

__all__ = [
    "ACCEPTED_FORMATS",
    "HEAD_GATE_INPUT",
    "HIDDEN_INPUT",
    "HIDDEN_OUTPUT",
    "IMAGE_INPUT",
    "LOGITS_OUTPUT",
    "MODE_NAMES",
    "SCHEMA_VERSION",
    "Calibration",
    "ImageDecodeError",
    "ImageTooLargeError",
    "Manifest",
    "ModelLoadError",
    "ModelVersion",
    "Preprocessing",
    "Segment",
    "ThresholdChoice",
    "confidence",
    "decode_image",
    "load_model",
    "new_manifest",
    "pil_pixel_limit",
    "preprocess",
    "read_manifest",
    "segment_io",
    "sha256_file",
    "softmax",
    "write_manifest",
]
