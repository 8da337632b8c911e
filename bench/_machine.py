"""What machine a benchmark ran on, printed and saved with every result, so that numbers from different
machines are never compared blind: the CPU model, its core count, and the single-precision matrix-multiply
rate (sgemm, through numpy's BLAS, all cores) measured at the start of the run."""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def sgemm_gflops(n: int = 1536, seconds: float = 1.5) -> float:
    """The best GFLOP/s of an n x n float32 matrix product over ``seconds``: the compute bound a kernel
    that does the same multiply-adds can be held against."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a @ b  # warm
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def describe() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "sgemm_gflops": round(sgemm_gflops(), 1),
        "node": platform.node(),
    }


def banner() -> str:
    m = describe()
    return f"machine: {m['cpu']}, {m['cores']} cores, sgemm {m['sgemm_gflops']:.0f} GFLOP/s (measured now)"
