"""This machine's CPU as kedge sees it: model, cores, and the instruction sets that decide
INT8 and BF16 speed. `kedge info` prints it, and `auto`'s per-machine cache is keyed by it
(a result measured on one CPU says nothing about another).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# x86 flags that matter for ONNX Runtime's INT8 kernels: AVX2 (baseline), AVX512-VNNI and
# AVX-VNNI (int8 dot products); ARM's asimddp (dot product) and i8mm on Jetson-class CPUs.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "asimddp", "i8mm")


def cpu_info() -> dict[str, Any]:
    """The CPU model, its cores and which of CPU_FLAGS it has (from /proc/cpuinfo; none where it is absent)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "hardware") and value.strip():
            model = value.strip()
    return {"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
            "int8_features": {flag: flag in flags for flag in CPU_FLAGS}}
