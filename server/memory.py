"""The serving process's memory: large frees go back to the OS, and start-up's objects are frozen.

glibc gives each thread its own heap arena and, by default, serves allocations below a threshold that grows
up to 32 MiB from the heap. Decoded images are 16 MiB blocks (Pillow's) allocated on whichever pool thread
decodes them: freed, they stay in that thread's arena, so four concurrent 36-megapixel images raised the
server's resident memory by 2 GB for good. Allocations from 4 MiB up are mapped and unmapped instead. The
embedding workers do the opposite, so that forwards reuse their activations (see embedder/heap.py).
"""

from __future__ import annotations

import logging

from embedder.heap import M_MMAP_THRESHOLD, glibc_function

log = logging.getLogger("visionsearch.server")

MMAP_THRESHOLD = 4 << 20


def return_large_frees_to_the_os() -> bool:
    """Fix glibc's mmap threshold (False where the C library is not glibc)."""
    mallopt = glibc_function("mallopt")
    if mallopt is None:
        log.warning("could not set the C library's mmap threshold; large frees may stay resident")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def freeze_startup_heap() -> int:
    """Move every object alive after start-up out of the cyclic collector's reach; returns how many.

    Start-up leaves millions of long-lived container objects (torch modules, the tokenizer's vocabulary, the
    WordNet hierarchy, every item's payload). Each full collection walked them all: about 0.2 s with the
    event loop stopped, which put 1% of the searches of a 1,000/s load at 180 ms. Frozen objects are still
    freed by reference counting; only cycles among them are never collected, and start-up's objects live as
    long as the server."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
