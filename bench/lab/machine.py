"""What a benchmark's numbers were measured on: cores, processor, its vector and int8 instructions, Python,
providers, load and package versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from dynadapter.cpu import CpuInfo, cpu_info

#: The /proc/cpuinfo flags that decide how fast the segments can run, in the order a reader looks for them:
#: the vector widths (AVX2, AVX-512), int8 dot products (VNNI: AVX-512's and the AVX2 form AVX-VNNI),
#: bfloat16 (AVX512-BF16) and Intel AMX's tile units. A flag the CPU lacks is not listed.
VECTOR_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
PACKAGES = ("onnxruntime-gpu", "onnxruntime", "openvino", "torch", "litserve", "nvidia-pytriton")


def cpu_description(info: CpuInfo | None = None) -> dict[str, Any]:
    """The CPU as a results page names it: ``model`` (None where /proc/cpuinfo has no model name), the
    ``instructions`` of ``VECTOR_FLAGS`` it has, in that order, and ``text``: both in one line
    ("AMD EPYC 9R45 (avx2, avx512f, avx512_vnni, avx512_bf16)")."""
    info = info or cpu_info()
    instructions = [flag for flag in VECTOR_FLAGS if flag in info.flags]
    model = info.model or platform.processor() or platform.machine() or None
    listed = ", ".join(instructions) or "no AVX2 or AVX-512"
    return {"model": model, "instructions": instructions, "text": f"{model or 'unknown CPU'} ({listed})"}


def machine(providers: str, load_before: float) -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared the machine was."""

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = cpu_description()
    return {
        "cpu_count": os.cpu_count(),
        "processor": cpu["text"],
        "cpu": cpu,
        "python": platform.python_version(),
        "providers": providers,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "packages": {name: package(name) for name in PACKAGES if package(name)},
    }
