"""The messages of `inference.GRPCInferenceService` (inference.proto), as Python classes.

Why not grpcio-tools' `_pb2.py` modules: those register their messages in protobuf's process-wide
default pool, where tritonclient.grpc's and KServe's own copies of the same `inference.*` messages
already go; two copies in one process fail with "duplicate symbol 'inference.ServerLiveRequest'". So the
build compiles inference.proto into a descriptor set (setup.py, grpc_tools.protoc: nothing generated is
committed), and this module builds the classes in a pool of its own: a process may hold this service,
its benchmark client and either of those clients at once.

A checkout that was never built (no inference.binpb beside the .proto) compiles the .proto on first
import into the user's cache (`$XDG_CACHE_HOME/dynadapter/grpc/`, keyed by the .proto's sha256), when
grpcio-tools is installed (the dev extra has it); else ImportError says to install the project.
"""

import hashlib
import os
import runpy
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "inference.GRPCInferenceService"
_HERE = Path(__file__).parent
PROTO = _HERE / "inference.proto"
BUILT = _HERE / "inference.binpb"


def _cached_build() -> Path:
    digest = hashlib.sha256(PROTO.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dynadapter" / "grpc"
    out = cache / f"inference-{digest}.binpb"
    if not out.is_file():
        try:
            build = runpy.run_path(str(_HERE / "build.py"))
            partial = out.with_suffix(f".{os.getpid()}.part")  # a concurrent first import never reads half a file
            build["compile_proto"](partial, PROTO)
            partial.replace(out)
        except ImportError as err:
            raise ImportError(
                f"{BUILT.name} was not built and grpcio-tools is missing: install the project "
                "(pip install -e '.[serve]' or a wheel), which compiles inference.proto"
            ) from err
    return out


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    path = BUILT if BUILT.is_file() else _cached_build()
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def _message_names(messages: Any, prefix: str) -> list[str]:
    """Full names of `messages` (DescriptorProtos) and of the messages nested in them."""
    names = []
    for item in messages:
        names += [prefix + item.name, *_message_names(item.nested_type, f"{prefix}{item.name}.")]
    return names


_FILES = list(_descriptor_set().file)
_POOL = descriptor_pool.DescriptorPool()
for _file in _FILES:
    _POOL.Add(_file)
# GetMessageClass: protobuf's one message-class builder since 4.21 (GetPrototype and friends are gone).
_CLASSES: dict[str, Any] = {
    name: message_factory.GetMessageClass(_POOL.FindMessageTypeByName(name))
    for file in _FILES
    for name in _message_names(file.message_type, f"{file.package}.")
}
#: method name -> (request class, response class), in the service's order
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (_CLASSES[method.input_type.lstrip(".")], _CLASSES[method.output_type.lstrip(".")])
    for method in _FILES[0].service[0].method
}


def message(name: str) -> Any:
    """The class of the message `inference.<name>` (nested: "ModelInferRequest.InferInputTensor")."""
    return _CLASSES[f"inference.{name}"]


def path(method: str) -> str:
    """The HTTP/2 path of a method, as clients call it: /inference.GRPCInferenceService/ModelInfer."""
    return f"/{SERVICE}/{method}"
