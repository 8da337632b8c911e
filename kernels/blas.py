"""The BLAS numpy calls, switched to one thread per call while a kernel runs its own threads over it.

The exact kernel can run one single-threaded sgemm and its selection per core, side by side, instead of one
two-threaded sgemm followed by a serial selection that leaves a core idle. OpenBLAS's thread count is one
setting for the whole process (``openblas_set_num_threads_local`` too, despite its name: it returns the
previous count, and the count is global), so ``one_thread_per_call`` sets it to 1 for the first kernel that
enters and restores it when the last one leaves. Other threads' matmuls in that window run on one thread:
slower, never wrong.

numpy's OpenBLAS is found through numpy's own extension module: a symbol looked up in that module's handle
resolves in the libraries it was linked against, so another OpenBLAS loaded into the process (faiss-cpu
bundles one) is never the one changed. Picking the first OpenBLAS in the process's memory map did exactly that
once faiss was imported: the window changed faiss's count, numpy's sgemm kept two threads under each of the
kernel's two threads, and the exact kernel ran ~10% slower. Without an OpenBLAS behind numpy, ``available`` is
False and callers keep their serial path.

threadpoolctl is not used for this: its OpenBLAS controller ignores thread-count changes from any thread but
the first that made one (so kernels called from gRPC threads would silently keep two BLAS threads), and its
``limit`` context restores what it saw on entry, which two overlapping windows would leave at 1.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# (get, set) thread-count functions: OpenBLAS's own names, and those of the scipy-openblas build numpy wheels
# ship (the names threadpoolctl looks for too).
_NAMES = (
    ("openblas_get_num_threads", "openblas_set_num_threads"),
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
)
_lock = threading.Lock()
_depth = 0
_saved = 0


def _numpy_core_path() -> str | None:
    """The file of numpy's C extension (numpy 2's ``_core``, numpy 1's ``core``), or None if not a file."""
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        path = getattr(module, "__file__", None)
        # CDLL(None) would open the whole process: every OpenBLAS in it again, the bug this lookup avoids.
        return path if isinstance(path, str) else None
    return None


@functools.cache
def _openblas() -> Any:
    path = _numpy_core_path()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for get_name, set_name in _NAMES:
        get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
        if get is not None and put is not None:
            get.argtypes, get.restype = [], ctypes.c_int
            put.argtypes, put.restype = [ctypes.c_int], None
            return get, put
    return None


def available() -> bool:
    """Whether ``one_thread_per_call`` can change numpy's BLAS here."""
    return _openblas() is not None


@contextmanager
def one_thread_per_call() -> Iterator[None]:
    """Inside, each BLAS call runs on its calling thread alone (nested and concurrent uses share a window)."""
    global _depth, _saved
    lib = _openblas()
    if lib is None:
        yield
        return
    get, put = lib
    with _lock:
        if _depth == 0:
            _saved = get()
            put(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                put(_saved)
