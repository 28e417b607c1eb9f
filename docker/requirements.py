"""Print the requirements of the project's extras, read from pyproject.toml, one per line.

The Dockerfile installs these before it copies the source, so that a code change reuses the cached
dependency layers (a few hundred MB, or ~2.5 GB with the CUDA libraries). Standard library only: it
runs in the bare base image.

    python3 docker/requirements.py pyproject.toml --extras serve [--cuda-libs]
    python3 docker/requirements.py pyproject.toml --build-system
    python3 docker/requirements.py --lock-from REPORT.json > docker/serve.lock   # `make lock`

The serving image installs the serve extra under docker/serve.lock, pip constraints that pin every
package of its closure (the CUDA wheels' too, a superset of the CPU build's) to one version: a
rebuild gets what was tested, and a patched release enters the image only through a new lock.
"""

import argparse
import json
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


def lock(report: dict) -> list[str]:
    """`name==version` for every package of a `pip install --dry-run --report` report, sorted by name."""
    pins = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in report["install"]
    }
    return [f"{name}=={pins[name]}" for name in sorted(pins)]


LOCK_HEADER = """\
# Pins of the serving image's packages (pip constraints): the serve extra with the CUDA wheels, resolved
# for CPython 3.11 on manylinux x86_64. Regenerate with `make lock`; tests/docker/test_dockerfile.py
# checks that each pin satisfies pyproject.toml.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path, nargs="?")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--lock-from", type=Path, metavar="REPORT", help="pins from a pip --report file")
    what.add_argument("--extras", help="comma-separated extras, e.g. serve or serve,train")
    what.add_argument("--build-system", action="store_true", help="the build backend's requirements")
    parser.add_argument("--cuda-libs", action="store_true", help="onnxruntime-gpu with its CUDA/cuDNN wheels")
    args = parser.parse_args(argv)
    if args.lock_from:
        sys.stdout.write(LOCK_HEADER + "".join(f"{line}\n" for line in lock(json.loads(args.lock_from.read_text()))))
        return
    if args.pyproject is None:
        parser.error("pyproject.toml is required with --extras and --build-system")
    pyproject = tomllib.loads(args.pyproject.read_text())
    if args.build_system:
        lines = pyproject["build-system"]["requires"]
    else:
        lines = requirements(pyproject, [e for e in args.extras.split(",") if e], args.cuda_libs)
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main()
