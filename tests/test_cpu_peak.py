"""common.cpu: the machine's peak from its CPU flags, and the plain bfloat16 warning.

Expected peaks are hand computations from the vendors' figures (FMA = 2 FLOPs):
AMD Zen 3 (AVX2, two 256-bit FMA units): 2 x 8 lanes x 2 = 32 FLOP/cycle per core, so 2 cores
at 2.45 GHz = 156.8 GFLOP/s; Intel Sapphire Rapids (two 512-bit FMA units): 64 FLOP/cycle,
2 cores at 2.0 GHz = 256 GFLOP/s; AMX-BF16 1024 FLOP/cycle per core."""
from __future__ import annotations

import pytest

from common import cpu

ZEN3 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC 7B13
cpu MHz		: 2450.000
siblings	: 2
cpu cores	: 2
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni

processor	: 1
vendor_id	: AuthenticAMD
"""

SAPPHIRE_RAPIDS = """processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.00GHz
cpu MHz		: 2699.998
siblings	: 4
cpu cores	: 2
flags		: sse sse2 fma avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
"""


def test_zen3_peak_and_no_bfloat16():
    info = cpu.parse_cpuinfo(ZEN3, logical_cpus=2)
    assert info.cores == 2 and info.clock_ghz == pytest.approx(2.45)
    assert info.float32_flops_per_cycle() == 32
    assert info.peak_flops("float32") == pytest.approx(156.8e9)
    assert info.bfloat16_unit() is None and info.peak_flops("bfloat16") is None
    advice = cpu.bfloat16_advice(info)
    assert "SLOWER than float32" in advice and "AMD EPYC 7B13" in advice


def test_sapphire_rapids_peak_hyperthreads_and_amx():
    # 4 logical CPUs on 2 cores: hyperthreads share the vector units, so 2 cores count.
    info = cpu.parse_cpuinfo(SAPPHIRE_RAPIDS, logical_cpus=4)
    assert info.threads_per_core == 2 and info.cores == 2
    assert info.clock_ghz == 2.0 and "model name" in info.clock_source  # base, not current
    assert info.peak_flops("float32") == pytest.approx(256e9)
    assert info.bfloat16_unit() == "AMX-BF16"
    assert info.peak_flops("bfloat16") == pytest.approx(2 * 1024 * 2.0e9)
    assert cpu.bfloat16_advice(info) is None


def test_unknown_cpu_gives_no_peak():
    info = cpu.CpuInfo(None, None, None, frozenset(), 2, 1, None, "unknown")
    assert info.peak_flops("float32") is None and "unknown" in cpu.bfloat16_advice(info)


def test_bfloat16_export_warns_on_a_cpu_without_bfloat16(monkeypatch):
    from export import precision

    monkeypatch.setattr(cpu, "this_machine", lambda: cpu.parse_cpuinfo(ZEN3, 2))
    with pytest.warns(precision.Bfloat16SlowWarning, match="SLOWER than float32"):
        assert precision.check_bfloat16_hardware()
    monkeypatch.setattr(cpu, "this_machine", lambda: cpu.parse_cpuinfo(SAPPHIRE_RAPIDS, 4))
    assert precision.check_bfloat16_hardware() is None


def test_onednn_cap_narrows_the_machine(monkeypatch, tmp_path):
    # Capped at AVX2, Sapphire Rapids counts as an AVX2 machine: 2 x 8 x 2 = 32 FLOP/cycle,
    # 2 cores at 2.0 GHz = 128 GFLOP/s, and no bfloat16 unit.
    info = cpu.parse_cpuinfo(SAPPHIRE_RAPIDS, logical_cpus=4, isa_cap="avx2")
    assert info.isa_cap == "AVX2" and info.has("avx2", "fma") and not info.has("avx512f")
    assert info.peak_flops("float32") == pytest.approx(128e9)
    assert info.bfloat16_unit() is None and info.bfloat16_capped_away
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu.bfloat16_advice(info)
    # Below AMX only: AVX512-BF16, 128 FLOP/cycle per core.
    info = cpu.parse_cpuinfo(SAPPHIRE_RAPIDS, logical_cpus=4, isa_cap="AVX512_CORE_BF16")
    assert info.bfloat16_unit() == "AVX512-BF16"
    assert info.peak_flops("bfloat16") == pytest.approx(2 * 128 * 2.0e9)
    # A cap above the machine, or one oneDNN does not know, changes nothing.
    for cap in ("AVX512_CORE", "NOT_AN_ISA"):
        info = cpu.parse_cpuinfo(ZEN3, logical_cpus=2, isa_cap=cap)
        assert info.isa_cap is None and info.peak_flops("float32") == pytest.approx(156.8e9)
        assert not info.bfloat16_capped_away and "SLOWER" in cpu.bfloat16_advice(info)
    # this_machine reads the variable.
    (tmp_path / "cpuinfo").write_text(SAPPHIRE_RAPIDS)
    monkeypatch.setattr(cpu, "CPUINFO", str(tmp_path / "cpuinfo"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu.this_machine().as_dict()["isa_cap"] == "AVX2"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert cpu.this_machine().bfloat16_unit() == "AMX-BF16"
