"""The C heap of the processes that run forwards: freed activations are kept for the next forward while
busy, and given back to the OS (glibc's ``malloc_trim``) at moments when nothing is lost.

Under glibc's defaults a one-thread MobileNetV2 forward of 2 images page-faulted about 4,700 fresh pages
(18 MB) every time: its larger activations were mapped and unmapped, or trimmed off the heap's top when
freed, and faulted in again by the next forward. That was 28% of the forward's time, in the kernel. With
both thresholds fixed high (``reuse_freed_memory``) a forward faults a few dozen pages, and a one-thread
stream ran 37 -> 60 images/s. Fixing the mmap threshold low (4 MiB, as the serving process does) is the
opposite: it halved Embed throughput. What the last batches left free is returned when the process is
idle or after start-up (``release_free_memory``).
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


M_TRIM_THRESHOLD = -1  # from malloc.h
M_MMAP_THRESHOLD = -3
# Above the largest activation tensor of a forward of up to 8 images on the shipped backbones
# (EfficientNet-Lite2 at 260 px: a 96-channel 130 px map of 8 images, 51.9 MB): those come from the heap
# and are reused. glibc documents 32 MiB as the limit and older versions refuse more; then 32 MiB is used,
# which still covers the server's batches of 2.
REUSE_MMAP_THRESHOLD = 64 << 20
_DOCUMENTED_MMAP_MAX = 32 << 20
# Free memory at the heap's top is kept up to this much; an idle trim gives it back regardless.
REUSE_TRIM_THRESHOLD = 256 << 20


def reuse_freed_memory() -> bool:
    """Keep freed blocks in this process's heap for the next forward instead of returning them to the OS at
    every free; False where the C library cannot (not glibc). For processes that run forwards; they should
    call ``release_free_memory`` when idle."""
    mallopt = glibc_function("mallopt")
    if mallopt is None:
        return False
    mapped = bool(mallopt(M_MMAP_THRESHOLD, REUSE_MMAP_THRESHOLD)) or bool(
        mallopt(M_MMAP_THRESHOLD, _DOCUMENTED_MMAP_MAX)
    )
    trimmed = bool(mallopt(M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD))
    return mapped and trimmed


def release_free_memory() -> bool:
    """Return free heap pages to the OS; False where the C library cannot (not glibc)."""
    trim = glibc_function("malloc_trim")
    return bool(trim(0)) if trim is not None else False
