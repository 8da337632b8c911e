"""Exact float32 re-ranking of candidate rows: the second step of a search on a quantized graph.

A graph of f16 or i8 vectors finds candidates cheaply (half or a quarter of the cache lines per hop) but
ranks them by approximate scores; each query's candidates are scored again against the float32 rows and the
best k kept. One compiled pass per query gathers the candidate rows, takes their dot products and sorts
them: for one query of 20 candidates it takes about 17 us where a numpy gather, einsum and argsort took about
34 us of a 0.3 ms search (bench/latency.py's collection, measured in-process); most of what is left is
fetching the 20 rows from memory.
"""

from __future__ import annotations

import numpy as np
from numba import njit


# Reassociation lets LLVM split each dot product over vector lanes; without it the sum is one chain of
# dependent adds, four cycles each (784-d: ~20 us for 20 candidates). Infinities stay exact (no "ninf").
@njit(cache=True, nogil=True, fastmath={"reassoc", "nsz", "contract"})
def _rescore(db: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    m, c = rows.shape
    d = db.shape[1]
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    scores = np.empty(c, dtype=np.float32)
    for j in range(m):
        for t in range(c):
            r = rows[j, t]
            if r < 0:
                scores[t] = -np.inf
                continue
            s = np.float32(0.0)
            for x in range(d):
                s += db[r, x] * queries[j, x]
            scores[t] = s
        # Stable: equal scores keep the graph's order, so a result never depends on the sort's whims.
        order = np.argsort(-scores, kind="mergesort")
        for p in range(min(k, c)):
            t = order[p]
            if rows[j, t] < 0:
                break  # missing candidates sort last (-inf)
            out_s[j, p] = scores[t]
            out_i[j, p] = rows[j, t]
    return out_s, out_i


def rescore(db: np.ndarray, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidate ``rows`` of ``db`` by exact float32 inner product, best
    first, as ``(scores, rows)`` of shape ``(len(queries), k)``; slots without a candidate (row -1 in
    ``rows``, or fewer than k candidates) hold ``-inf`` and -1 at the end of their line.

    ``db`` is (n, d) and ``queries`` (m, d), both float32; ``rows`` is (m, c) int64 with every row below n
    or -1."""
    if db.dtype != np.float32 or queries.dtype != np.float32:
        raise TypeError("db and queries must be float32")
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise ValueError(f"shape mismatch: db {db.shape}, queries {queries.shape}")
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or rows.shape[0] != queries.shape[0]:
        raise ValueError(
            f"rows must be (queries, candidates), got {rows.shape} for {queries.shape[0]} queries"
        )
    if rows.size and (rows.max() >= db.shape[0] or rows.min() < -1):
        raise IndexError(f"candidate rows must be -1 or within 0..{db.shape[0] - 1}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _rescore(db, queries, rows, k)
