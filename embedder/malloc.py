"""Keep large, short-lived buffers from pinning memory after they are freed (the server and its workers).

glibc gives each thread its own heap arena and, by default, serves allocations below a threshold that grows
up to 32 MiB from the heap. Decoded images are 16 MiB blocks (Pillow's) allocated on whichever pool thread
decodes them: freed, they stay in that thread's arena, so four concurrent 36-megapixel images raised the
server's resident memory by 2 GB for good. Allocations from 4 MiB up are mapped and unmapped instead. (Not
in the embedding workers: see embedder/workers.py.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("visionsearch.memory")

_M_MMAP_THRESHOLD = -3  # from malloc.h
MMAP_THRESHOLD = 4 << 20


def return_large_frees_to_the_os() -> bool:
    """Fix glibc's mmap threshold (False where the C library is not glibc)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        log.warning("could not set the C library's mmap threshold; large frees may stay resident")
        return False
