"""The facts of a machine that bitwise equality of a CPU run depends on.

Two runs of the same spec and seed give the same bits on the same machine. Across machines
they may not: the BLAS library picks kernels by instruction set (AVX2, AVX-512, AMX), and a
different kernel sums in a different order. So every run records these facts, and
`grokscale reproduce` compares them before promising bitwise equality.
"""

from __future__ import annotations

import functools
import os
import platform
import re

import torch

# Environment variables that change which kernels run.
# Thread counts are not among them: the run sets its own (torch.set_num_threads, train.threads).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA", "CUBLAS_WORKSPACE_CONFIG")
# Instruction-set flags that select BLAS and ATen kernels.
ISA_FLAGS = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_tile",
    "amx_bf16",
    "neon",
    "asimd",
)


@functools.cache
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or platform.machine())


def cpu_flags() -> list[str]:
    m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    have = set(m.group(1).split()) if m else set()
    return [f for f in ISA_FLAGS if f in have]


def blas() -> str:
    """The BLAS torch was built with, from its build configuration."""
    config = torch.__config__.show()
    for name in ("MKL", "OpenBLAS", "BLIS", "Accelerate"):
        if f"BLAS_INFO={name.lower()}" in config.replace(" ", "") or f"USE_{name.upper()}=ON" in config:
            return name
    return "unknown"


def facts(threads: int) -> dict:
    """What a run records of its machine (module docstring)."""
    return {
        "cpu": cpu_model(),
        "isa": cpu_flags(),
        "arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "blas": blas(),
        "threads": threads,
        "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def bitwise_comparable(recorded: dict, here: dict) -> list[str]:
    """Why a run recorded on one machine may not repeat bit for bit here: the facts that differ
    (empty: bitwise equality can be expected)."""
    keys = ("cpu", "isa", "arch", "cpu_capability", "torch", "blas", "threads", "env")
    return [
        f"{k}: recorded {recorded.get(k)!r}, here {here.get(k)!r}"
        for k in keys
        if k in recorded and recorded.get(k) != here.get(k)
    ]
