"""ModelInfer's messages <-> the OIP request and answers the REST route reads and writes.

A `ModelInferRequest` is turned into the REST form (`oip.InferenceRequest` with the one input's bytes as
the binary tensor data extension would carry them), so gRPC is held to the very checks and messages
of REST (dynadapter.service.oip, routes/oip.py's `read_job`). An input's data arrive in
`raw_input_contents` (as tritonclient sends them; BYTES elements 4-byte length-prefixed) or in its
`contents` field of its datatype (`bytes_contents` for BYTES, `fp32_contents` for FP32). The request's
parameters are REST's (the knob, `timeout` in microseconds); `threshold` and `budget` may also be decimal
strings, for KServe's client. The answer's outputs all travel in `raw_output_contents`, as Triton answers.
"""

import struct
from typing import Any

import numpy as np
from pydantic import ValidationError

from dynadapter.service import oip
from dynadapter.service.engine import Engine
from dynadapter.service.errors import bad_request
from dynadapter.service.grpc.protocol import message
from dynadapter.service.routes.oip import answer_tensors
from dynadapter.service.segment_runner import ExitResult

_LENGTH = struct.Struct("<I")
_FRACTIONS = ("threshold", "budget")
#: the `contents` field that holds each datatype's elements (InferTensorContents)
_CONTENTS = {"BYTES": "bytes_contents", "FP32": "fp32_contents", "INT32": "int_contents", "BOOL": "bool_contents"}


def parameters(entries: Any) -> dict[str, Any]:
    """A map<string, InferParameter> (or ModelRepositoryParameter) as plain values; unset entries are left out."""
    out = {}
    for key, value in entries.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def rest_form(request: Any) -> tuple[oip.InferenceRequest, bytes]:
    """The request as REST's `InferenceRequest` plus its first input's bytes (the only input `read_input`
    accepts); 400 when raw and typed contents are mixed or counted wrong."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise bad_request(f"raw_input_contents holds {len(raw)} tensor(s) for {len(request.inputs)} input(s)")
    inputs, binary = [], []
    for index, tensor in enumerate(request.inputs):
        data = _raw(tensor, raw[index]) if raw else _contents(tensor)
        binary.append(data)
        inputs.append(
            {
                "name": tensor.name,
                "shape": list(tensor.shape),
                "datatype": tensor.datatype,
                "parameters": parameters(tensor.parameters) | {"binary_data_size": len(data)},
            }
        )
    outputs = [{"name": o.name, "parameters": parameters(o.parameters)} for o in request.outputs] or None
    knob = {key: _number(key, value) for key, value in parameters(request.parameters).items()}
    body = {"id": request.id or None, "parameters": knob, "inputs": inputs, "outputs": outputs}
    try:
        message_ = oip.InferenceRequest.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(item) for item in first["loc"]) or "request"
        raise bad_request(f"invalid inference request: {where}: {first['msg']}") from None
    return message_, binary[0] if binary else b""


def _number(key: str, value: Any) -> Any:
    """`threshold` and `budget` from a string_param too ("0.5"): KServe's InferParameter has no double_param,
    so its clients can send a fraction only as a string. Anything else is left to REST's strict checks."""
    if key in _FRACTIONS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # refused by the knob's check, with REST's message
    return value


def _raw(tensor: Any, data: bytes) -> bytes:
    if tensor.HasField("contents") and tensor.contents.ListFields():
        raise bad_request(f"input {tensor.name!r}: its data are in raw_input_contents and contents; send one")
    return data


def _contents(tensor: Any) -> bytes:
    """The typed contents of an input in the binary layout of its datatype (what raw_input_contents would hold)."""
    given = [field.name for field, _ in tensor.contents.ListFields()]
    expected = _CONTENTS.get(tensor.datatype)
    if any(name != expected for name in given):
        raise bad_request(
            f"input {tensor.name!r}: datatype {tensor.datatype[:20]!r} but data in {', '.join(given)}"
            + (f"; send {expected}" if expected else "")
        )
    if tensor.datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(item)) + item for item in tensor.contents.bytes_contents)
    if tensor.datatype == "FP32":
        return np.asarray(tensor.contents.fp32_contents, dtype="<f4").tobytes()
    return b""  # a datatype no input has: read_input names what it takes


def response(request: Any, engine: Engine, results: list[ExitResult], wanted: list[tuple[str, bool, int]]) -> Any:
    """The ModelInferResponse: the `wanted` outputs as REST OIP computes them, each in raw_output_contents."""
    answer = message("ModelInferResponse")(model_name=engine.name, model_version=engine.version, id=request.id)
    for name, values in answer_tensors(engine, results, wanted):
        output, raw = oip.tensor_output(name, values, binary=True)
        answer.outputs.add(name=name, datatype=output.datatype, shape=output.shape)
        answer.raw_output_contents.append(raw or b"")
    return answer
