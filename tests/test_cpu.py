"""The one reader of /proc/cpuinfo: what it parses, and what the CPU-dependent choices make of a machine
whose file cannot be read."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynadapter import cpu
from dynadapter.cpu import CpuInfo, parse_cpuinfo

# two logical processors of a hybrid laptop CPU, as Linux writes them (tabs before the colons)
TWO = (
    "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: 12th Gen Intel(R) Core(TM) i7-1260P\n"
    "cpu MHz\t\t: 2100.000\nflags\t\t: fpu sse2 avx2 fma avx_vnni\n\n"
    "processor\t: 1\nmodel name\t: 12th Gen Intel(R) Core(TM) i7-1260P\ncpu MHz\t\t: 4700.5\n"
    "flags\t\t: fpu sse2 avx2 fma avx_vnni\nbugs\t\t: spectre_v1\n"
)


def test_parse_reads_model_flags_and_every_clock() -> None:
    info = parse_cpuinfo(TWO)
    assert info == CpuInfo(
        model="12th Gen Intel(R) Core(TM) i7-1260P",
        flags=frozenset({"fpu", "sse2", "avx2", "fma", "avx_vnni"}),
        mhz=(2100.0, 4700.5),
    )
    # a file without those keys (some ARM kernels) gives nothing, not an error
    assert parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\n") == CpuInfo(None, frozenset(), ())


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setattr(cpu, "CPUINFO", tmp_path / "no-such-file")
    cpu.this_cpu.cache_clear()
    yield
    cpu.this_cpu.cache_clear()


@pytest.mark.usefixtures("unreadable")
def test_a_machine_without_proc_cpuinfo_is_unknown_and_each_choice_takes_its_safe_side() -> None:
    import torch

    from dynadapter.bench.suite.cells import bf16_autocast_is_fast
    from dynadapter.service.backends.openvino import int8_accelerated
    from dynadapter.training.distributed import device_name

    assert cpu.this_cpu() == CpuInfo(None, frozenset(), (), readable=False)
    assert int8_accelerated() is True  # int8 segments are not passed over blindly
    assert bf16_autocast_is_fast() is torch.cuda.is_available()  # float32, unless a GPU is there
    assert device_name(torch.device("cpu")).endswith(
        f"{torch.get_num_threads()} thread" + "s" * (torch.get_num_threads() != 1)
    )


def cgroup_tree(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup (`files`: path under it -> content) and /proc/self/cgroup (`membership`)."""
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "proc_cgroup").write_text(membership)
    return root, tmp_path / "proc_cgroup"


def test_a_cgroup_v2_quota_caps_the_usable_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: set(range(64)))
    root, proc = cgroup_tree(tmp_path, "0::/kubepods/pod1\n", {"kubepods/pod1/cpu.max": "250000 100000\n"})
    assert cpu.cgroup_cpu_limit(root, proc) == 2.5
    assert cpu.usable_cpus(root, proc) == 2  # rounded down: a third thread would be throttled
    # the smallest quota over the cgroup and those above it governs
    (root / "kubepods" / "cpu.max").write_text("100000 100000\n")
    assert cpu.usable_cpus(root, proc) == 1


def test_a_cgroup_v1_quota_caps_the_usable_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: set(range(8)))
    files = {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    }
    root, proc = cgroup_tree(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", files)
    assert cpu.usable_cpus(root, proc) == 3


def test_without_a_quota_the_affinity_mask_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    root, proc = cgroup_tree(
        tmp_path,
        "0::/\n1:cpu:/\n",
        {"cpu.max": "max 100000\n", "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cpu.cgroup_cpu_limit(root, proc) is None
    assert cpu.usable_cpus(root, proc) == 3
    assert cpu.usable_cpus(tmp_path / "nowhere", tmp_path / "no_proc_file") == 3  # nothing readable: no cap
