"""The machine a result names (bench/lab/machine.py): the CPU's model and its vector and int8 instructions."""

from dynadapter.bench.lab.machine import cpu_description, machine
from dynadapter.cpu import parse_cpuinfo

ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R45
cpu MHz\t\t: 3700.000
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni vaes
processor\t: 1
model name\t: AMD EPYC 9R45
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_bf16 avx512_vnni vaes
"""
SAPPHIRE_RAPIDS = (
    "model name\t: Intel(R) Xeon(R) Platinum 8488C\n"
    "flags\t\t: avx2 fma avx512f avx512_vnni amx_tile amx_int8 amx_bf16\n"
)


def test_the_cpu_is_named_with_its_vector_and_int8_instructions_in_a_fixed_order() -> None:
    described = cpu_description(parse_cpuinfo(ZEN5))
    assert described["model"] == "AMD EPYC 9R45"
    assert described["instructions"] == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]
    assert described["text"] == "AMD EPYC 9R45 (avx2, fma, avx512f, avx512bw, avx512_vnni, avx512_bf16)"
    amx = cpu_description(parse_cpuinfo(SAPPHIRE_RAPIDS))
    assert amx["instructions"] == ["avx2", "fma", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"]


def test_a_cpu_without_avx2_says_so() -> None:
    described = cpu_description(parse_cpuinfo("model name\t: Old Box\nflags\t\t: fpu sse2\n"))
    assert (described["instructions"], described["text"]) == ([], "Old Box (no AVX2 or AVX-512)")


def test_every_result_names_this_machines_cpu() -> None:
    described = machine("cpu", 0.5)
    assert described["processor"] == described["cpu"]["text"] == cpu_description()["text"]
    assert described["load_average_1m"]["start"] == 0.5 and described["cpu_count"] >= 1
