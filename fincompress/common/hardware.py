"""The machine a number came from: CPU model and the instruction-set flags INT8 and bf16 speed depend on.

One reader of /proc/cpuinfo for every stage (the benchmark's metadata, the INT8 recipe's record, the
server's /info, the load test's rows).
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
BF16_ISA = ("avx512_bf16", "amx_bf16")  # native bf16 dot products; elsewhere bf16 is emulated and slower than FP32
# The flags that decide INT8 and bf16 kernel speed (VNNI: one-instruction 8-bit dot products; AMX: tiles).
SPEED_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", *BF16_ISA)


def _cpuinfo_field(name: str, cpuinfo: Path) -> str | None:
    if not cpuinfo.is_file():
        return None
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.split(":", 1)[0].strip() == name:
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU's instruction-set flags (avx2, avx512_vnni, amx_int8, ...) as the kernel reports them;
    empty where /proc/cpuinfo does not exist. INT8 and bf16 kernel speed depends on them."""
    flags = _cpuinfo_field("flags", cpuinfo)
    return set(flags.split()) if flags else set()


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (e.g. "Intel(R) Xeon(R) Processor"), else what `platform` knows."""
    return _cpuinfo_field("model name", cpuinfo) or platform.processor() or platform.machine()


def cpu_metadata(cpuinfo: Path = CPUINFO) -> dict:
    """CPU model, architecture and the speed-relevant ISA flags present (they differ between machines)."""
    flags = cpu_flags(cpuinfo)
    return {"cpu": cpu_model(cpuinfo), "machine": platform.machine(), "isa": [f for f in SPEED_ISA if f in flags]}
