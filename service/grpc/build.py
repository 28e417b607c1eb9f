"""Compile inference.proto into a protobuf descriptor set with grpcio-tools' protoc (build time only).

Standard library and `grpc_tools` only, and runnable by path: setup.py runs it while the project builds
(a wheel, or `pip install -e .`), before `dynadapter` is importable. The service never imports it
unless the built file is missing (a checkout that was never installed: dynadapter.service.grpc.protocol).
"""

from pathlib import Path

PROTO = Path(__file__).with_name("inference.proto")
DESCRIPTOR_SET = "inference.binpb"


def compile_proto(out: Path, proto: Path = PROTO) -> Path:
    """Write `proto`'s FileDescriptorSet to `out` (a file); returns `out`. RuntimeError if protoc refuses it."""
    from grpc_tools import protoc  # the build requirement grpcio-tools

    out.parent.mkdir(parents=True, exist_ok=True)
    status = protoc.main(["protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}", str(proto)])
    if status != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {proto.name} (exit status {status})")
    return out
