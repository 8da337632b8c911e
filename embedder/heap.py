"""Give the C heap's free pages back to the OS (glibc's ``malloc_trim``), at moments when nothing is lost.

A process that once held large transient allocations (a build's batches, a burst of big requests) keeps
the freed pages in glibc's arenas: they count towards its memory until reused. Trimming on the hot path would
make the next forward fault its activations in again (fixing the mmap threshold in the workers halved
Embed throughput), so callers trim only when idle or after start-up.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def glibc_function(name: str) -> Callable[..., int] | None:
    """A function of the C library, or None where it has none of that name (not glibc)."""
    lib = ctypes.util.find_library("c")
    if not lib:
        return None
    try:
        return getattr(ctypes.CDLL(lib), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot (not glibc)."""
    trim = glibc_function("malloc_trim")
    return bool(trim(0)) if trim is not None else False
