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


_FILES = list(_descriptor_set().file)
_POOL = descriptor_pool.DescriptorPool()
_CLASSES: dict[str, Any] = message_factory.GetMessages(_FILES, pool=_POOL)
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
