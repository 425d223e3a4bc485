"""What this machine's CPU can do, from its flags: vector units, bfloat16 support, peak FLOP/s.

Shared by the export (`--compute-dtype bfloat16` checks the hardware) and the benchmarks (the
floor beside the machine's peak). Linux: /proc/cpuinfo; elsewhere the flags are unknown and
every answer says so (None), rather than guessing.

Peak = physical cores available to this process x FLOPs per cycle per core x clock, with an
FMA counted as 2 FLOPs. FLOPs per cycle per core, from the vendors' microarchitecture
manuals (Intel 64 and IA-32 Architectures Optimization Reference Manual; AMD Software
Optimization Guides for Zen 2/3/4/5):

    float32  AVX-512, Intel (two 512-bit FMA units)        2 x 16 lanes x 2 = 64
             AVX-512, AMD Zen 4 (512-bit ops on 256-bit units) = 32; Zen 5 (family 26) = 64
             AVX2 + FMA (two 256-bit FMA units)             2 x 8 x 2       = 32
             AVX without FMA (separate add and multiply)    8 + 8           = 16
             SSE2                                           4 + 4           = 8
    bfloat16 AMX-BF16 (one tile multiply unit)                               1024
             AVX512-BF16 (VDPBF16PS: 16 lanes x 2 products x 2, two units)   128
             neither: no bfloat16 arithmetic; TensorFlow converts to float32 and back, so
             bfloat16 runs slower than float32.

Caveats, written down instead of hidden: some Xeon Silver/Bronze parts have one 512-bit FMA
unit (half the AVX-512 figure); the clock is the base or TSC clock (turbo runs higher,
heavy AVX-512 lower), so a kernel can exceed the "peak" by a few per cent.

With oneDNN capped (ONEDNN_MAX_CPU_ISA=AVX2, say) the flags above the cap are left out: the
peak and the bfloat16 unit are those of the machine TensorFlow's kernels then emulate.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional

CPUINFO = "/proc/cpuinfo"

# oneDNN's dispatcher cap (its "CPU Dispatcher Control" guide): TensorFlow's convolutions and
# matmuls use no instruction set above it, so the machine counts as the capped one. Both
# names are read, the newer first.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
_ISA_LEVELS = {"SSE41": 0, "AVX": 1, "AVX2": 2, "AVX2_VNNI": 2, "AVX2_VNNI_2": 2,
               "AVX512_CORE": 3, "AVX512_CORE_VNNI": 3, "AVX512_CORE_BF16": 4,
               "AVX512_CORE_FP16": 4, "AVX10_1_512": 4, "AVX512_CORE_AMX": 5,
               "AVX10_1_512_AMX": 5, "AVX512_CORE_AMX_FP16": 5, "AVX10_1_512_AMX_FP16": 5}


@dataclasses.dataclass
class CpuInfo:
    vendor: Optional[str]
    model_name: Optional[str]
    family: Optional[int]
    flags: frozenset
    logical_cpus: int            # CPUs this process may run on
    threads_per_core: int
    clock_ghz: Optional[float]
    clock_source: str
    isa_cap: Optional[str] = None  # oneDNN's cap, when one is set and narrows the flags
    flags_above_cap: frozenset = frozenset()  # the CPU's flags that the cap leaves out

    @property
    def cores(self) -> int:
        """Physical cores: hyperthreads share a core's vector units."""
        return max(1, self.logical_cpus // max(1, self.threads_per_core))

    @property
    def known(self) -> bool:
        return bool(self.flags)

    def has(self, *flags: str) -> bool:
        return all(f in self.flags for f in flags)

    def float32_flops_per_cycle(self) -> Optional[int]:
        if not self.known:
            return None
        if self.has("avx512f"):
            if self.vendor == "AuthenticAMD":
                return 64 if (self.family or 0) >= 26 else 32
            return 64
        if self.has("avx2", "fma"):
            return 32
        if self.has("avx"):
            return 16
        return 8

    def bfloat16_unit(self) -> Optional[str]:
        """'AMX-BF16', 'AVX512-BF16', or None (no bfloat16 arithmetic in hardware)."""
        if self.has("amx_bf16"):
            return "AMX-BF16"
        if self.has("avx512_bf16"):
            return "AVX512-BF16"
        return None

    @property
    def bfloat16_capped_away(self) -> bool:
        """The CPU has a bfloat16 unit that oneDNN's cap forbids. TensorFlow reads the CPU,
        not the cap, and still sends bfloat16 matmuls to oneDNN, which aborts the process."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags_above_cap)

    def bfloat16_flops_per_cycle(self) -> Optional[int]:
        if not self.known:
            return None
        return {"AMX-BF16": 1024, "AVX512-BF16": 128}.get(self.bfloat16_unit())

    def peak_flops(self, dtype: str = "float32") -> Optional[float]:
        """FLOP/s of the machine's vector units in `dtype`, or None when unknown."""
        per_cycle = (self.float32_flops_per_cycle() if dtype == "float32"
                     else self.bfloat16_flops_per_cycle())
        if per_cycle is None or not self.clock_ghz:
            return None
        return self.cores * per_cycle * self.clock_ghz * 1e9

    def as_dict(self) -> dict:
        return {"vendor": self.vendor, "model_name": self.model_name, "family": self.family,
                "logical_cpus": self.logical_cpus, "threads_per_core": self.threads_per_core,
                "cores": self.cores, "clock_ghz": self.clock_ghz,
                "clock_source": self.clock_source,
                "vector_flags": sorted(f for f in self.flags if f.startswith(("avx", "amx",
                                                                              "fma", "sse"))),
                "isa_cap": self.isa_cap,
                "float32_flops_per_cycle": self.float32_flops_per_cycle(),
                "bfloat16_unit": self.bfloat16_unit(),
                "bfloat16_flops_per_cycle": self.bfloat16_flops_per_cycle(),
                "peak_float32_flops_per_s": self.peak_flops("float32"),
                "peak_bfloat16_flops_per_s": self.peak_flops("bfloat16")}


def parse_cpuinfo(text: str, logical_cpus: Optional[int] = None,
                  isa_cap: Optional[str] = None) -> CpuInfo:
    """CpuInfo from the text of /proc/cpuinfo (the first processor's block describes all),
    without the flags above oneDNN's `isa_cap` (a ONEDNN_MAX_CPU_ISA value) when one is given."""
    first: dict[str, str] = {}
    siblings = cores_per_socket = None
    for line in text.splitlines():
        if not line.strip():
            if first:
                break
            continue
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    if first.get("siblings", "").isdigit() and first.get("cpu cores", "").isdigit():
        siblings, cores_per_socket = int(first["siblings"]), int(first["cpu cores"])
    threads = max(1, siblings // cores_per_socket) if siblings and cores_per_socket else 1
    model = first.get("model name")
    clock, source = None, "unknown"
    m = re.search(r"@\s*([\d.]+)\s*GHz", model or "")
    if m:  # the nominal (base) clock in the brand string
        clock, source = float(m.group(1)), "model name (base clock)"
    elif _float(first.get("cpu MHz")):
        # VMs often hide the brand clock; the kernel's current/TSC frequency stands in.
        clock, source = _float(first["cpu MHz"]) / 1000.0, "cpu MHz (current or TSC clock)"
    family = first.get("cpu family")
    flags = frozenset(first.get("flags", "").split())
    capped = _below_cap(flags, isa_cap)
    return CpuInfo(vendor=first.get("vendor_id"), model_name=model,
                   family=int(family) if family and family.isdigit() else None,
                   flags=capped, logical_cpus=logical_cpus or _logical_cpus(),
                   threads_per_core=threads, clock_ghz=clock, clock_source=source,
                   isa_cap=isa_cap.upper() if capped != flags else None,
                   flags_above_cap=flags - capped)


def _below_cap(flags: frozenset, isa_cap: Optional[str]) -> frozenset:
    """The flags oneDNN may use under `isa_cap`; all of them for no cap or an unknown one
    (oneDNN ignores a value it does not know)."""
    level = _ISA_LEVELS.get((isa_cap or "").upper())
    if level is None:
        return flags

    def above(flag: str) -> bool:
        return ((level < 5 and flag.startswith("amx")) or
                (level < 4 and flag == "avx512_bf16") or
                (level < 3 and flag.startswith("avx512")) or
                (level < 2 and flag in ("avx2", "fma")) or
                (level < 1 and flag.startswith("avx")))
    return frozenset(f for f in flags if not above(f))


def _float(value) -> Optional[float]:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _logical_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def this_machine() -> CpuInfo:
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:  # not Linux: nothing is known
        return CpuInfo(None, None, None, frozenset(), _logical_cpus(), 1, None, "unknown")
    cap = next((os.environ[v] for v in ISA_CAP_VARIABLES if os.environ.get(v)), None)
    return parse_cpuinfo(text, isa_cap=cap)


def bfloat16_advice(info: Optional[CpuInfo] = None) -> Optional[str]:
    """None when bfloat16 has hardware here; else a plain sentence saying it will be slower."""
    info = info or this_machine()
    if not info.known:
        return ("bfloat16: this CPU's flags are unknown (no /proc/cpuinfo); without "
                "AVX512-BF16 or AMX-BF16, bfloat16 runs slower than float32 on a CPU")
    if info.bfloat16_unit():
        return None
    if info.bfloat16_capped_away:
        return (f"bfloat16 cannot run under ONEDNN_MAX_CPU_ISA={info.isa_cap}: this CPU has a "
                f"bfloat16 unit, TensorFlow sends bfloat16 matmuls to oneDNN, and the cap makes "
                f"oneDNN abort on them. On a real {info.isa_cap} machine bfloat16 would be "
                f"slower than float32; export float32 for one")
    return (f"bfloat16 would be SLOWER than float32 on this CPU ({info.model_name or 'unknown'}"
            f"): it has neither AVX512-BF16 nor AMX-BF16, so TensorFlow converts every "
            f"bfloat16 operation to float32 and back. Export float32 for this machine, or "
            f"bfloat16 for servers that have one of them (Intel Cooper Lake / Sapphire Rapids "
            f"or later, AMD Zen 4 or later)")
