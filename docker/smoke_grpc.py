"""The gRPC half of docker/smoke.sh, run inside the container (`exec -i NAME python - < docker/smoke_grpc.py`):
OIP v2 over gRPC on 127.0.0.1:8001 answers ServerReady, and ModelInfer classifies a PNG made here with the
image's own message classes (service/grpc/protocol.py). Exits non-zero with a reason on the first thing wrong."""

import io
import struct
import sys

import grpc
from PIL import Image

from dynadapter.service.grpc.protocol import METHODS, path


def call(channel: grpc.Channel, method: str, request: object) -> object:
    request_type, response_type = METHODS[method]
    stub = channel.unary_unary(
        path(method), request_serializer=request_type.SerializeToString, response_deserializer=response_type.FromString
    )
    return stub(request, timeout=30)


def main() -> None:
    channel = grpc.insecure_channel("127.0.0.1:8001")
    if not call(channel, "ServerReady", METHODS["ServerReady"][0]()).ready:
        sys.exit("gRPC ServerReady: not ready")
    index = call(channel, "RepositoryIndex", METHODS["RepositoryIndex"][0]()).models
    name = min(model.name for model in index if model.state == "READY")
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, format="PNG")
    png = buffer.getvalue()
    request = METHODS["ModelInfer"][0](model_name=name)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(png)) + png)
    response = call(channel, "ModelInfer", request)
    outputs = [tensor.name for tensor in response.outputs]
    if "probabilities" not in outputs or response.model_name != name:
        sys.exit(f"gRPC ModelInfer answered {response.model_name!r} with outputs {outputs}")
    print(f"gRPC on 8001: ready, {name} classified ({', '.join(outputs)})")


if __name__ == "__main__":
    main()
