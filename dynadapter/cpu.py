"""This machine's CPU as Linux describes it in /proc/cpuinfo: model name, clocks and instruction flags.

Read at run time, never assumed: machines differ (one had AVX512-BF16, another VNNI without AMX).
The one reader for every choice or report that depends on the CPU: whether the benchmark suite
trains with bfloat16 autocast, whether a model's int8 segments pay off on the OpenVINO backend, the
peak GFLOP/s of the precision benchmark, and the device name results pages print.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuInfo", "cpu_info", "parse_cpuinfo", "this_cpu"]

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuInfo:
    """Args:
    model: the first processor's "model name" (None where the file has none, e.g. some ARM kernels).
    flags: every processor's instruction-set flags ("avx2", "avx512_vnni", "amx_bf16", ...).
    mhz: each processor's current clock in MHz, as the kernel last read it.
    readable: False where /proc/cpuinfo could not be read (not Linux): then nothing is known.
    """

    model: str | None
    flags: frozenset[str]
    mhz: tuple[float, ...]
    readable: bool = True


def parse_cpuinfo(text: str) -> CpuInfo:
    """/proc/cpuinfo's ``key : value`` lines as a `CpuInfo` (keys it does not use are ignored)."""
    models, flags, mhz = [], set(), []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "model name":
            models.append(value)
        elif key == "flags":
            flags.update(value.split())
        elif key == "cpu MHz":
            try:
                mhz.append(float(value))
            except ValueError:
                pass
    return CpuInfo(models[0] if models else None, frozenset(flags), tuple(mhz))


@functools.cache
def this_cpu() -> CpuInfo:
    """This machine's CPU (read once per process)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text())
    except OSError:
        return CpuInfo(None, frozenset(), (), readable=False)


def cpu_info(cpuinfo: str | None = None) -> CpuInfo:
    """``cpuinfo`` (a /proc/cpuinfo text, as tests pass one) parsed, or this machine's CPU when None."""
    return this_cpu() if cpuinfo is None else parse_cpuinfo(cpuinfo)
