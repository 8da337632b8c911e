"""What machine a benchmark ran on, printed and saved with every result, so that numbers from different
machines are never compared blind: the CPU model, its core count, and the single-precision matrix-multiply
rate (sgemm, through numpy's BLAS, all cores) measured at the start of the run. ``CpuSteal`` measures, over a
timed window, the share of CPU time the hypervisor gave to other guests: on a shared virtual machine it comes
and goes (0-28% within one run here), and throughput and latency tails move with it."""

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


def _cpu_ticks() -> list[int] | None:
    """The machine-wide ``cpu`` line of /proc/stat (user, nice, system, idle, iowait, irq, softirq, steal,
    ...), or None where there is none."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    return [int(x) for x in fields[1:]] if fields and fields[0] == "cpu" and len(fields) > 8 else None


class CpuSteal:
    """``with CpuSteal() as steal: ...``; then ``steal.share`` is the stolen share of all CPU time in the
    window (0-1; None where /proc/stat does not say) and ``str(steal)`` a phrase to print beside a result."""

    share: float | None = None

    def __enter__(self) -> CpuSteal:
        self._start = _cpu_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_ticks()
        if self._start is not None and end is not None:
            delta = [b - a for a, b in zip(self._start[:8], end[:8], strict=True)]
            self.share = delta[7] / sum(delta) if sum(delta) > 0 else 0.0

    def __str__(self) -> str:
        return "hypervisor steal n/a" if self.share is None else f"hypervisor steal {self.share:.0%}"


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
