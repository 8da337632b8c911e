"""Score tiles for the exact kernel from a small C kernel (``kernels/native/scores.c``), where it is built.

At 64 queries the exact kernel's multiply streamed through BLAS's sgemm at ~0.75 of a square sgemm's rate:
sgemm copies ("packs") each database tile before using it, and that copy waits on memory with nothing to
overlap. The C kernel broadcasts each database value straight from its row while the next rows are
prefetched, and streams at ~0.93-1.1 of the square rate on the 2-core AMD EPYC (bench/exact.py prints the
kernel with each source of scores). It needs AVX-512F; ``scripts/build_native.sh`` (run by ``make install``)
compiles it, and without it (no C compiler, another CPU) ``available()`` is False and the exact kernel takes
its scores from BLAS as before.

ctypes releases the GIL for the call, so the kernel's threads score their tiles side by side.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

LIBRARY = Path(__file__).resolve().parent / "native" / "libscores.so"
LANES = 16  # float32 lanes of an AVX-512 register: query blocks are padded to a multiple of this

_enabled = True


def _cpu_has_avx512f() -> bool:
    try:
        from numpy._core._multiarray_umath import __cpu_features__  # numpy's own CPU dispatch table
    except ImportError:
        return False
    return bool(__cpu_features__.get("AVX512F")) and bool(__cpu_features__.get("FMA3"))


@functools.cache
def _function() -> Any:
    if not LIBRARY.is_file() or not _cpu_has_avx512f():
        return None
    try:
        lib = ctypes.CDLL(str(LIBRARY))
    except OSError:
        return None
    f = lib.vs_scores_tile
    size = ctypes.c_size_t
    f.argtypes = [ctypes.c_void_p, size, size, size, ctypes.c_void_p, size, ctypes.c_void_p]
    f.restype = None
    return f


def available() -> bool:
    """Whether the C kernel is built, loads, and this CPU can run it (and it is not switched off)."""
    return _enabled and _function() is not None


@contextmanager
def switched_off() -> Iterator[None]:
    """Score with BLAS meanwhile, process-wide (bench/exact.py's peer row, and tests of the BLAS path)."""
    global _enabled
    saved, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = saved


def padded_transpose(queries: np.ndarray) -> np.ndarray:
    """The queries as the kernel reads them: transposed, ``(dim, width)``, zero columns up to a width that
    is a multiple of ``LANES``."""
    m, dim = queries.shape
    width = -(-m // LANES) * LANES
    qt = np.zeros((dim, width), np.float32)
    qt[:, :m] = queries.T
    return qt


def score_tile(db: np.ndarray, t0: int, t1: int, qt: np.ndarray, out: np.ndarray) -> None:
    """``out[: t1 - t0] = db[t0:t1] @ qt``: ``db`` C-contiguous float32 (rows x dim), ``qt`` from
    ``padded_transpose``, ``out`` C-contiguous float32 with ``qt``'s width. Only when ``available()``."""
    dim, width = qt.shape
    if db.dtype != np.float32 or qt.dtype != np.float32 or out.dtype != np.float32:
        raise TypeError("db, qt and out must be float32")
    if not (db.flags.c_contiguous and qt.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("db, qt and out must be C-contiguous")
    if db.shape[1] != dim or width % LANES or out.shape[1] != width or not 0 <= t0 <= t1 <= db.shape[0]:
        raise ValueError(f"shapes: db {db.shape}, rows {t0}:{t1}, qt {qt.shape}, out {out.shape}")
    if out.shape[0] < t1 - t0:
        raise ValueError(f"out holds {out.shape[0]} rows, the tile has {t1 - t0}")
    f = _function()
    f(db.ctypes.data + t0 * dim * 4, t1 - t0, dim, dim, qt.ctypes.data, width, out.ctypes.data)
