"""The Open Inference Protocol v2 (KServe / Triton REST) as this service speaks it: messages and tensor codecs.

Inputs (one per request): `image`, BYTES [N], encoded images (base64 strings in JSON, raw bytes with
the binary tensor data extension); or `pixels`, FP32 [N, 3, H, W], preprocessed as the manifest says.
Outputs: `probabilities` FP32 [N, C], `exit_index` INT32 [N], `gflops` FP32 [N], `exit_reason` BYTES [N]
(confident, deadline or last: why each image left where it did); an output asked for
with `"classification": k` becomes BYTES [N, k] of Triton's "value:index:label" strings instead.
The binary tensor data extension: the body is `Inference-Header-Content-Length` bytes of JSON, then
each binary tensor's bytes in the order of the JSON's tensors, BYTES elements as 4-byte little-endian
length + bytes. docs/protocol-oip.md is the user's page.
"""

import base64
import binascii
import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from dynadapter.contract.model_repository import Manifest
from dynadapter.service.errors import bad_request
from dynadapter.service.middleware import ascii_length

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_CONTENT_TYPE = "application/octet-stream"
IMAGE_INPUT, PIXELS_INPUT = "image", "pixels"
OUTPUTS = ("probabilities", "exit_index", "gflops", "exit_reason")
_NUMPY = {"FP32": np.float32, "INT32": np.int32}
_LENGTH = struct.Struct("<I")

Parameters = dict[str, str | int | float | bool]


class RequestInput(BaseModel, strict=True):
    """Strict, like every part of a request: JSON types as given (a shape of `"1"` or `1.0` is refused)."""

    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None  # absent when the tensor travels in binary (parameters.binary_data_size)


class RequestOutput(BaseModel, strict=True):
    name: str
    parameters: Parameters | None = None  # binary_data: bool, classification: k


class InferenceRequest(BaseModel, strict=True):
    id: str | None = None
    parameters: Parameters | None = None  # threshold | mode | budget, timeout (us), binary_data_output
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


def model_inputs(manifest: Manifest) -> list[TensorMetadata]:
    height, width = manifest.preprocessing.size
    return [
        TensorMetadata(name=IMAGE_INPUT, datatype="BYTES", shape=[-1]),
        TensorMetadata(name=PIXELS_INPUT, datatype="FP32", shape=[-1, 3, height, width]),
    ]


def model_outputs(manifest: Manifest) -> list[TensorMetadata]:
    return [
        TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, manifest.num_classes]),
        TensorMetadata(name="exit_index", datatype="INT32", shape=[-1]),
        TensorMetadata(name="gflops", datatype="FP32", shape=[-1]),
        TensorMetadata(name="exit_reason", datatype="BYTES", shape=[-1]),
    ]


# Reading requests.


def parse_request(body: bytes, header_length: str | None) -> tuple[InferenceRequest, bytes]:
    """Split the body into the JSON request and its binary part (empty without the extension); 400 if malformed."""
    split = len(body)
    if header_length is not None:
        length = ascii_length(header_length)
        if length is None or length > len(body):
            raise bad_request(f"{HEADER_LENGTH}: {header_length!r} is not a length within the {len(body)}-byte body")
        split = length
    try:
        request = InferenceRequest.model_validate_json(body[:split])
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(item) for item in first["loc"]) or "body"
        raise bad_request(f"invalid inference request: {where}: {first['msg']}") from None
    return request, body[split:]


def read_input(request: InferenceRequest, binary: bytes, manifest: Manifest) -> list[bytes] | np.ndarray:
    """The one input of the request: encoded images (BYTES [N]) or pixels (FP32 [N, 3, H, W]); 400 otherwise."""
    if len(request.inputs) != 1:
        raise bad_request(f"give exactly one input, {IMAGE_INPUT!r} (BYTES [N]) or {PIXELS_INPUT!r} (FP32 [N,3,H,W])")
    tensor = request.inputs[0]
    raw = _binary_part(tensor, binary)
    if tensor.name == IMAGE_INPUT:
        return _images(tensor, raw)
    if tensor.name == PIXELS_INPUT:
        return _pixels(tensor, raw, manifest)
    raise bad_request(f"unknown input {tensor.name!r}; this model takes {IMAGE_INPUT!r} or {PIXELS_INPUT!r}")


def _binary_part(tensor: RequestInput, binary: bytes) -> bytes | None:
    """The tensor's bytes when it travels in binary, None when in `data`. Other input parameters are
    ignored, as Triton ignores the ones it does not know; shared memory, which Triton knows, is refused."""
    if "shared_memory_region" in (tensor.parameters or {}):
        raise bad_request(f"input {tensor.name!r}: shared memory is not supported here; send data or binary data")
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None and tensor.data is not None:
        # Triton refuses the pair too: which one holds the tensor would be a guess.
        raise bad_request(
            f"input {tensor.name!r} must set only one of 'data' and 'parameters.binary_data_size', not both"
        )
    if size is None:
        if tensor.data is None:
            raise bad_request(f"input {tensor.name!r} has neither data nor parameters.binary_data_size")
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size != len(binary):
        raise bad_request(f"input {tensor.name!r}: binary_data_size {size!r} but {len(binary)} bytes follow the JSON")
    return binary


def _images(tensor: RequestInput, raw: bytes | None) -> list[bytes]:
    if tensor.datatype != "BYTES" or len(tensor.shape) != 1:
        raise bad_request(f"input {IMAGE_INPUT!r} must be BYTES of shape [N], not {tensor.datatype} {tensor.shape}")
    images = _split_bytes(raw) if raw is not None else [_base64(item) for item in _flat(tensor.data or [])]
    if len(images) != tensor.shape[0] or not images:
        raise bad_request(f"input {IMAGE_INPUT!r}: shape {tensor.shape} but {len(images)} element(s)")
    return images


def _split_bytes(raw: bytes) -> list[bytes]:
    """4-byte little-endian length + bytes, repeated (the binary form of a BYTES tensor)."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise bad_request("BYTES tensor: a length prefix is cut short")
        (size,) = _LENGTH.unpack_from(raw, offset)
        if offset + 4 + size > len(raw):
            raise bad_request("BYTES tensor: an element is shorter than its length prefix")
        items.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return items


def _base64(item: object) -> bytes:
    if not isinstance(item, str):
        raise bad_request(f"input {IMAGE_INPUT!r}: in JSON each element is a base64 string")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"input {IMAGE_INPUT!r}: an element is not valid base64") from None


def _pixels(tensor: RequestInput, raw: bytes | None, manifest: Manifest) -> np.ndarray:
    expected = [3, *manifest.preprocessing.size]
    if tensor.datatype != "FP32" or len(tensor.shape) != 4 or tensor.shape[1:] != expected or tensor.shape[0] < 1:
        raise bad_request(
            f"input {PIXELS_INPUT!r} must be FP32 of shape [N, {', '.join(map(str, expected))}] for this model, "
            f"not {tensor.datatype} {tensor.shape}"
        )
    count = math.prod(tensor.shape)  # Python ints: a huge N (2**64) is a count mismatch, not an int64 overflow
    if raw is not None:
        values = np.frombuffer(raw, dtype="<f4") if len(raw) % 4 == 0 else np.zeros(0, np.float32)
    else:
        values = _json_numbers(_flat(tensor.data or []))
    if values.size != count:
        raise bad_request(f"input {PIXELS_INPUT!r}: shape {tensor.shape} needs {count} values, got {values.size}")
    if not np.isfinite(values).all():
        raise bad_request(f"input {PIXELS_INPUT!r}: NaN, infinite or out-of-range (beyond FP32) values")
    return values.astype(np.float32).reshape(tensor.shape)


def _json_numbers(items: list[Any]) -> np.ndarray:
    """JSON numbers as float32, strictly: a string or a boolean is no number, and a value beyond float32
    (1e400, which JSON parsers read as infinity, or a 400-digit integer) is out of range; 400 otherwise."""
    if not all(isinstance(item, int | float) and not isinstance(item, bool) for item in items):
        raise bad_request(f"input {PIXELS_INPUT!r}: the data are not all JSON numbers")
    try:
        values = np.asarray(items, dtype=np.float64)
    except OverflowError:  # an integer past float64's range
        raise bad_request(f"input {PIXELS_INPUT!r}: a value is out of range for FP32") from None
    with np.errstate(over="ignore"):
        return values.astype(np.float32)


def _flat(data: Sequence[Any]) -> list[Any]:
    """OIP allows the data of a tensor flat or nested in its shape; row-major either way."""
    flat: list[Any] = []
    for item in data:
        flat.extend(_flat(item) if isinstance(item, list) else [item])
    return flat


# Writing responses.


def encode_response(response: InferenceResponse, binary: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """The body and headers: plain JSON, or JSON + binary outputs with `Inference-Header-Content-Length`."""
    header = response.model_dump_json(exclude_none=True).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + b"".join(binary), {HEADER_LENGTH: str(len(header)), "content-type": BINARY_CONTENT_TYPE}


def tensor_output(name: str, values: np.ndarray, binary: bool) -> tuple[ResponseOutput, bytes | None]:
    """An output tensor: JSON data, or its bytes (little-endian; BYTES length-prefixed) for the binary part."""
    datatype = "BYTES" if values.dtype == object else _datatype(values.dtype)
    shape = list(values.shape)
    if not binary:
        data = [str(v) for v in values.ravel()] if datatype == "BYTES" else values.ravel().tolist()
        return ResponseOutput(name=name, shape=shape, datatype=datatype, data=data), None
    if datatype == "BYTES":
        raw = b"".join(_LENGTH.pack(len(b)) + b for b in (str(v).encode() for v in values.ravel()))
    else:
        raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
    return ResponseOutput(name=name, shape=shape, datatype=datatype, parameters={"binary_data_size": len(raw)}), raw


def _datatype(dtype: np.dtype) -> str:
    for name, numpy_type in _NUMPY.items():
        if dtype == numpy_type:
            return name
    raise TypeError(f"no OIP datatype for {dtype}")


def classification(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: [N, C] -> BYTES [N, k] of "value:index:label", best first."""
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    rows = [[f"{probabilities[n, i]:f}:{i}:{labels[i]}" for i in row] for n, row in enumerate(ranked)]
    return np.array(rows, dtype=object).reshape(len(rows), k)
