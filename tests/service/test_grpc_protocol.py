"""The gRPC service definition: field for field the messages of Triton's grpc_service.proto and KServe's
grpc_predict_v2.proto (what makes their clients interoperate), and the compile-on-first-use fallback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from dynadapter.service.grpc import protocol

# Dumps a client library's `inference` file descriptor as {message: [[field, number, type, label], ...]} and
# its service's methods; in a child process, since the two libraries cannot share one (tests/support/grpc_clients.py).
DUMP = """
import json, sys, importlib
from google.protobuf import descriptor_pb2
module = importlib.import_module(sys.argv[1])
proto = descriptor_pb2.FileDescriptorProto()
module.DESCRIPTOR.CopyToProto(proto)
messages = {}
def walk(items, prefix):
    for m in items:
        messages[prefix + m.name] = sorted([f.name, f.number, f.type, f.label] for f in m.field)
        walk(m.nested_type, prefix + m.name + ".")
walk(proto.message_type, "")
methods = {m.name: [m.input_type, m.output_type] for m in proto.service[0].method}
service = proto.service[0]
print(json.dumps({"package": proto.package, "service": service.name, "messages": messages, "methods": methods}))
"""


def ours() -> dict:
    proto = protocol._FILES[0]
    messages: dict[str, list] = {}

    def walk(items: list, prefix: str) -> None:
        for m in items:
            messages[prefix + m.name] = sorted([f.name, f.number, f.type, f.label] for f in m.field)
            walk(list(m.nested_type), prefix + m.name + ".")

    walk(list(proto.message_type), "")
    methods = {m.name: [m.input_type, m.output_type] for m in proto.service[0].method}
    return {"package": proto.package, "service": proto.service[0].name, "messages": messages, "methods": methods}


def theirs(module: str) -> dict:
    done = subprocess.run([sys.executable, "-c", DUMP, module], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_every_message_and_method_is_tritons_field_for_field() -> None:
    mine, triton = ours(), theirs("tritonclient.grpc.service_pb2")
    assert (
        (mine["package"], mine["service"])
        == (triton["package"], triton["service"])
        == ("inference", "GRPCInferenceService")
    )
    for name, fields in mine["messages"].items():
        # Triton's messages may have more fields than this service reads; every field here is Triton's.
        assert all(field in triton["messages"][name] for field in fields), name
    assert all(triton["methods"][name] == types for name, types in mine["methods"].items())


def test_the_inference_messages_are_kserves_field_for_field() -> None:
    mine, kserve = ours(), theirs("kserve.protocol.grpc.grpc_predict_v2_pb2")
    # KServe's repository messages are its own (model_name = 1), not Triton's extension served here; its
    # InferParameter lacks double_param and uint64_param (so its clients send fractions as strings).
    shared = [name for name in mine["messages"] if name in kserve["messages"] and "Repository" not in name]
    assert {"ModelInferRequest", "ModelInferResponse", "ModelMetadataResponse", "ServerMetadataResponse"} <= set(shared)
    for name in shared:
        assert all(field in mine["messages"][name] for field in kserve["messages"][name]), name
        if name != "InferParameter":
            assert mine["messages"][name] == kserve["messages"][name], name
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"):
        assert kserve["methods"][name] == mine["methods"][name]


def test_a_checkout_never_built_compiles_the_proto_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = protocol._cached_build()
    assert built.parent == tmp_path / "dynadapter" / "grpc" and built.name.startswith("inference-")
    compiled = descriptor_pb2.FileDescriptorSet.FromString(built.read_bytes())
    assert list(compiled.file) == protocol._FILES
    assert protocol._cached_build() == built  # once per .proto: a second use reads it
