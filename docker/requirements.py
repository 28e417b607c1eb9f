"""Print the requirements of the project's extras, read from pyproject.toml, one per line.

The Dockerfile installs these before it copies the source, so that a code change reuses the cached
dependency layers (a few hundred MB, or ~2.5 GB with the CUDA libraries). Standard library only: it
runs in the bare base image.

    python3 docker/requirements.py pyproject.toml --extras serve [--cuda-libs]
    python3 docker/requirements.py pyproject.toml --build-system
"""

import argparse
import re
import sys
from pathlib import Path

import tomllib

ORT_GPU = re.compile(r"^onnxruntime-gpu(?=[<>=!~;\s]|$)")
# onnxruntime-gpu's extras that pull the CUDA runtime, cuBLAS, cuFFT, cuRAND and cuDNN from PyPI, so
# that the image needs no nvidia/cuda base: the host (or the container toolkit) supplies only the driver.
CUDA_EXTRAS = "[cuda,cudnn]"


def requirements(pyproject: dict, extras: list[str], cuda_libs: bool = False) -> list[str]:
    """The project's dependencies plus those of `extras`, in pyproject order, without duplicates."""
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = sorted(set(extras) - set(optional))
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    out: list[str] = []
    for req in [*project.get("dependencies", []), *(r for extra in extras for r in optional[extra])]:
        if cuda_libs:
            req = ORT_GPU.sub("onnxruntime-gpu" + CUDA_EXTRAS, req)
        if req not in out:
            out.append(req)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--extras", help="comma-separated extras, e.g. serve or serve,train")
    what.add_argument("--build-system", action="store_true", help="the build backend's requirements")
    parser.add_argument("--cuda-libs", action="store_true", help="onnxruntime-gpu with its CUDA/cuDNN wheels")
    args = parser.parse_args(argv)
    pyproject = tomllib.loads(args.pyproject.read_text())
    if args.build_system:
        lines = pyproject["build-system"]["requires"]
    else:
        lines = requirements(pyproject, [e for e in args.extras.split(",") if e], args.cuda_libs)
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
