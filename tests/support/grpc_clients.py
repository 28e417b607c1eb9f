"""Clients of the service's OIP gRPC port: a raw one over the service's own message classes (in process),
and the SDKs users have, tritonclient.grpc and KServe's InferenceGRPCClient, each in a child process.

Why a child process: tritonclient.grpc and kserve each register their own copy of the `inference.*`
messages in protobuf's default pool, and a process that has imported one cannot import the other
("duplicate symbol"); the suite imports kserve elsewhere. `python -m tests.support.grpc_clients CLIENT
ADDRESS` reads a request as JSON on stdin and prints the answer as JSON (`sdk_infer` drives it).
"""

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc

from dynadapter.service.grpc.protocol import METHODS, message, path

ROOT = Path(__file__).resolve().parents[2]


class RawClient:
    """Every method of the service on `address` (host:port), with the request message given as built."""

    def __init__(self, address: str, **options: int) -> None:
        self.channel = grpc.insecure_channel(address, options=list(options.items()))

    def call(
        self,
        method: str,
        request: Any = None,
        timeout: float = 30.0,
        key: str | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        **fields: Any,
    ) -> Any:
        """The response of `method` to `request` (or one built from `fields`), sent with `metadata` and the API
        `key` (as `authorization: Bearer`); grpc.RpcError on an error status."""
        request_type, response_type = METHODS[method]
        stub = self.channel.unary_unary(
            path(method),
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        metadata += (("authorization", f"Bearer {key}"),) if key is not None else ()
        return stub(request if request is not None else request_type(**fields), timeout=timeout, metadata=metadata)

    def close(self) -> None:
        self.channel.close()


def infer_request(model: str, images: list[bytes], raw: bool = True, **parameters: Any) -> Any:
    """A ModelInferRequest of `images` as the input `image` (BYTES [N]): raw_input_contents (length-prefixed,
    as tritonclient sends) or bytes_contents; `parameters` typed as tritonclient types them."""
    request = message("ModelInferRequest")(model_name=model)
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[len(images)])
    if raw:
        request.raw_input_contents.append(b"".join(len(b).to_bytes(4, "little") + b for b in images))
    else:
        tensor.contents.bytes_contents.extend(images)
    for key, value in parameters.items():
        set_parameter(request.parameters[key], value)
    return request


def set_parameter(parameter: Any, value: Any) -> None:
    if isinstance(value, bool):
        parameter.bool_param = value
    elif isinstance(value, int):
        parameter.int64_param = value
    elif isinstance(value, float):
        parameter.double_param = value
    else:
        parameter.string_param = value


def sdk_infer(client: str, address: str, request: dict[str, Any]) -> dict[str, Any]:
    """Run `client` ("triton" or "kserve") in a child process on `request` ({"model", "images": base64 list,
    "parameters", "key"}); its answer {"outputs": {name: list}, "model_version"} or {"error": {"code", "message"}}."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.grpc_clients", client, address],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _triton(address: str, request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    client = triton.InferenceServerClient(address)
    headers = {"authorization": f"Bearer {request['key']}"} if request.get("key") else None
    images = [base64.b64decode(item) for item in request["images"]]
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=object))
    try:
        health = [
            client.is_server_live(),
            client.is_server_ready(),
            client.is_model_ready(request["model"], headers=headers),
        ]
        result = client.infer(request["model"], [tensor], parameters=request.get("parameters"), headers=headers)
    except InferenceServerException as err:
        return {"error": {"code": err.status(), "message": err.message()}}
    names = ("probabilities", "exit_index", "gflops", "exit_reason")
    outputs = {name: _plain(result.as_numpy(name)) for name in names}
    return {"outputs": outputs, "model_version": result.get_response().model_version, "health": health}


def _kserve(address: str, request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def run() -> dict[str, Any]:
        client = InferenceGRPCClient(address, timeout=30)
        images = [base64.b64decode(item) for item in request["images"]]
        tensor = InferInput("image", [len(images)], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=object), binary_data=True)
        infer = InferRequest(request["model"], [tensor], parameters=request.get("parameters"))
        headers = (("authorization", f"Bearer {request['key']}"),) if request.get("key") else None
        try:
            response = await client.infer(infer, headers=headers)
        except grpc.aio.AioRpcError as err:
            return {"error": {"code": err.code().name, "message": err.details()}}
        finally:
            await client.close()
        outputs = {output.name: _plain(output.as_numpy()) for output in response.outputs}
        return {"outputs": outputs, "model_version": response.model_version}

    return asyncio.run(run())


def _plain(values: Any) -> list[Any]:
    return (
        [v.decode() if isinstance(v, bytes) else v for v in values.ravel().tolist()]
        if values.ndim == 1
        else values.tolist()
    )


if __name__ == "__main__":
    chosen, where = sys.argv[1], sys.argv[2]
    print(json.dumps({"triton": _triton, "kserve": _kserve}[chosen](where, json.loads(sys.stdin.read()))))
