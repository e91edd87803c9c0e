"""Where a number came from: the date, the CPU's vector units, the float path and the starting checkpoint.

Tiny-model training is chaotic in the last float bit, so a figure is only reproducible together with the bits it
started from (the shipped checkpoints) and the arithmetic it ran on. Every table and benchmark line that rlpost
commits carries :func:`describe`.
"""
from __future__ import annotations

import datetime
import hashlib
import os
from pathlib import Path

# Forces generic (non-AVX) kernels in ATen, MKL and oneDNN: the same code then rounds differently, as it does on
# a CPU with other vector units or on a GPU. Set before torch is imported (i.e. in a fresh process).
CAPPED_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"}


def cpu_vector_flags() -> str:
    """The vector-unit flags of this CPU that decide the native float path, e.g. ``fma avx avx2 avx512f``."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        import platform
        return platform.processor() or "unknown"
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "amx_tile")
    return " ".join(f for f in flags if f in wanted) or "no avx"


def float_path() -> str:
    """``native`` or ``capped (ATEN_CPU_CAPABILITY=default)`` (whatever this process was started with)."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    return f"capped (ATEN_CPU_CAPABILITY={cap})" if cap else "native"


def checkpoint_digest(path: str | Path) -> str:
    """First 12 hex digits of the sha256 of a checkpoint folder's weight files (which bits a run started from)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def describe() -> str:
    """One line: date, CPU vector flags, float path, torch version."""
    import torch
    return (f"{datetime.date.today()}, CPU vector flags: {cpu_vector_flags()}, float path: {float_path()}, "
            f"torch {torch.__version__}")
