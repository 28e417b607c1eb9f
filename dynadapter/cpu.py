"""This machine's CPU as Linux describes it in /proc/cpuinfo: model name, clocks and instruction flags; and how
many of its cores this process may use (`usable_cpus`: the affinity mask, capped by the cgroup's CPU quota).

Read at run time, never assumed: machines differ (one had AVX512-BF16, another VNNI without AMX).
The one reader for every choice or report that depends on the CPU: whether the benchmark suite
trains with bfloat16 autocast, whether a model's int8 segments pay off on the OpenVINO backend, the
peak GFLOP/s of the precision benchmark, and the device name results pages print.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["CpuInfo", "cgroup_cpu_limit", "cpu_info", "parse_cpuinfo", "this_cpu", "usable_cpus"]

CPUINFO = Path("/proc/cpuinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


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


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """The cores this process may keep busy: its affinity mask (`os.sched_getaffinity`), capped by its
    cgroup's CPU quota rounded down (a container given 2.5 CPUs on a 64-core host: 2), at least 1.

    What the service's runtime threads and decode workers default to, so that they never outnumber the
    cores they can have (threads beyond the quota are throttled, not run). `root` and `proc_cgroup`: where
    the cgroup file systems and this process's cgroup list are (tests pass others).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call (not Linux)
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.floor(limit))
    return max(1, cores)


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs this process's cgroup may use (CFS quota / period), the smallest over its cgroup and the ones
    above it, cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us`, `cpu.cfs_period_us`); None when unlimited
    or unknown."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            limits += [_v2_limit(folder) for folder in _folders(root, path)]
        elif "cpu" in controllers.split(","):
            mount = next((root / name for name in (controllers, "cpu", "cpu,cpuacct") if (root / name).is_dir()), None)
            limits += [_v1_limit(folder) for folder in _folders(mount, path)] if mount else []
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def _folders(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder under `mount` and those above it; in a container the mount's root is its own cgroup."""
    parts = PurePosixPath(path).relative_to("/").parts if path.startswith("/") else ()
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_limit(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")  # "max 100000" (no quota) or "<quota> <period>", in microseconds
    if text is None or text.startswith("max"):
        return None
    quota, _, period = text.partition(" ")
    return int(quota) / int(period or 100000)


def _v1_limit(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    if quota is None or period is None or int(quota) <= 0:  # -1: no quota
        return None
    return int(quota) / int(period)
