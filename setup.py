"""The one build step pyproject.toml cannot declare: the gRPC service's protobuf descriptors.

grpcio-tools (a build requirement) compiles service/grpc/inference.proto into inference.binpb, the file
the service builds its message classes from (dynadapter.service.grpc.protocol). Nothing generated is
committed. A wheel gets the file in its build folder; an editable install (`pip install -e .`) gets
it beside the .proto, since setuptools then maps the package to the source folder.
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).parent / "service" / "grpc"


class BuildWithProtos(build_py):
    """build_py, then inference.proto -> inference.binpb into the package as built (or in place when editable)."""

    def run(self) -> None:
        super().run()
        build = runpy.run_path(str(SOURCE / "build.py"))
        if self.editable_mode:
            target = SOURCE
        else:
            target = Path(self.build_lib) / "dynadapter" / "service" / "grpc"
        build["compile_proto"](target / build["DESCRIPTOR_SET"], SOURCE / "inference.proto")

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [
            *super().get_outputs(include_bytecode),
            str(Path(self.build_lib) / "dynadapter/service/grpc/inference.binpb"),
        ]


setup(cmdclass={"build_py": BuildWithProtos})
