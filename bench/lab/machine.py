"""What a benchmark's numbers were measured on: cores, processor, Python, providers, load and package versions."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def machine(providers: str, load_before: float) -> dict[str, Any]:
    """What the numbers were measured on; the load average says how shared the machine was."""

    def package(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "providers": providers,
        "load_average_1m": {"start": load_before, "end": os.getloadavg()[0]},
        "packages": {
            name: package(name) for name in ("onnxruntime-gpu", "onnxruntime", "torch", "litserve") if package(name)
        },
    }
