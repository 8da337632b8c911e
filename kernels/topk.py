"""Fused batched inner-product top-k: scores and each query's best k in one pass over the database.

The database is split into one contiguous chunk per thread; each thread walks its chunk in tiles and keeps a
bounded min-heap per query, so the full (queries x database) score matrix is never materialised. Queries are
processed in blocks of four against pairs of rows, so every value loaded is used several times: at batch 1 the
loop is bound by memory bandwidth, at larger batches this register blocking (and never writing the score
matrix out) is what beats a BLAS matmul followed by argpartition. For cosine similarity, store and query unit
vectors.

From ``_BLAS_MIN_QUERIES`` queries up, the scores come a tile of rows at a time from a multiply instead, and
a Numba pass keeps each query's best k of each tile. With more than one thread, each thread takes one
contiguous part of the rows and scores its tiles beside the others (tiles of 256 KiB of scores, within a
core's L2), with the C score tiles of ``kernels.scores`` where they are built, else with sgemm on one BLAS
thread; on one thread a serial loop of ``m x _BLAS_TILE_ROWS`` tiles, sized for the cache, uses BLAS's own
threads. At batch 64 the hand-blocked loop reached about half of the square-matrix sgemm rate, the sgemm
tiles 65-74%, the C tiles about all of it (bench/exact.py prints the kernel with each).
"""

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange

from kernels import blas, scores

_QUERY_BLOCK = 4
_TILE = 128
_BLAS_MIN_QUERIES = 16
_BLAS_TILE_ROWS = 4096  # 64 queries x 4096 rows of float32 scores = 1 MiB, within L2
_SPLIT_TILE_BYTES = 256 << 10  # of scores per thread's tile: within its core's L2 across sgemm's K blocks
_SPLIT_TILE_MIN_ROWS = 1024


@njit(inline="always", nogil=True)
def _heap_offer(hs: np.ndarray, hi: np.ndarray, k: int, score: np.float32, idx: int) -> None:
    # Min-heap with the worst kept entry at the root; a score not above the root's is rejected at once,
    # which is the common case once the heap has warmed up. Rows arrive in increasing order, so a tie loses
    # to what is kept; "worse" is a lower score, or an equal score on a higher row, so that every chunking
    # of the rows keeps, and the merge returns, the same rows: best score first, lowest row among ties.
    if score <= hs[0]:
        return
    hs[0] = score
    hi[0] = idx
    p = 0
    while True:
        c = 2 * p + 1
        if c >= k:
            break
        r = c + 1
        if r < k and (hs[r] < hs[c] or (hs[r] == hs[c] and hi[r] > hi[c])):
            c = r
        if hs[c] < hs[p] or (hs[c] == hs[p] and hi[c] > hi[p]):
            hs[c], hs[p] = hs[p], hs[c]
            hi[c], hi[p] = hi[p], hi[c]
            p = c
        else:
            break


@njit(inline="always", nogil=True)
def _offer4(heap_s, heap_i, c, j0, k, s0, s1, s2, s3, i):  # type: ignore[no-untyped-def]
    _heap_offer(heap_s[c, j0], heap_i[c, j0], k, s0, i)
    _heap_offer(heap_s[c, j0 + 1], heap_i[c, j0 + 1], k, s1, i)
    _heap_offer(heap_s[c, j0 + 2], heap_i[c, j0 + 2], k, s2, i)
    _heap_offer(heap_s[c, j0 + 3], heap_i[c, j0 + 3], k, s3, i)


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _chunk_heaps(
    db: np.ndarray, n: int, alive: np.ndarray, queries: np.ndarray, k: int, n_chunks: int
) -> tuple[np.ndarray, np.ndarray]:
    m, d = queries.shape
    heap_s = np.full((n_chunks, m, k), -np.inf, dtype=np.float32)
    heap_i = np.full((n_chunks, m, k), -1, dtype=np.int64)
    chunk = (n + n_chunks - 1) // n_chunks
    full_blocks = m - m % _QUERY_BLOCK
    for c in prange(n_chunks):
        lo = c * chunk
        hi = min(n, lo + chunk)
        for t0 in range(lo, hi, _TILE):
            t1 = min(hi, t0 + _TILE)
            for j0 in range(0, full_blocks, _QUERY_BLOCK):
                # Register block: 4 queries x 2 rows, eight accumulators, six loads per eight multiply-adds.
                i = t0
                while i + 1 < t1:
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    b0 = np.float32(0.0)
                    b1 = np.float32(0.0)
                    b2 = np.float32(0.0)
                    b3 = np.float32(0.0)
                    for x in range(d):
                        u = db[i, x]
                        v = db[i + 1, x]
                        q0 = queries[j0, x]
                        q1 = queries[j0 + 1, x]
                        q2 = queries[j0 + 2, x]
                        q3 = queries[j0 + 3, x]
                        a0 += u * q0
                        a1 += u * q1
                        a2 += u * q2
                        a3 += u * q3
                        b0 += v * q0
                        b1 += v * q1
                        b2 += v * q2
                        b3 += v * q3
                    if alive[i]:
                        _offer4(heap_s, heap_i, c, j0, k, a0, a1, a2, a3, i)
                    if alive[i + 1]:
                        _offer4(heap_s, heap_i, c, j0, k, b0, b1, b2, b3, i + 1)
                    i += 2
                if i < t1 and alive[i]:
                    a0 = np.float32(0.0)
                    a1 = np.float32(0.0)
                    a2 = np.float32(0.0)
                    a3 = np.float32(0.0)
                    for x in range(d):
                        u = db[i, x]
                        a0 += u * queries[j0, x]
                        a1 += u * queries[j0 + 1, x]
                        a2 += u * queries[j0 + 2, x]
                        a3 += u * queries[j0 + 3, x]
                    _offer4(heap_s, heap_i, c, j0, k, a0, a1, a2, a3, i)
            for j in range(full_blocks, m):
                for i in range(t0, t1):
                    if not alive[i]:
                        continue
                    s = np.float32(0.0)
                    for x in range(d):
                        s += db[i, x] * queries[j, x]
                    _heap_offer(heap_s[c, j], heap_i[c, j], k, s, i)
    return heap_s, heap_i


@njit(inline="always", nogil=True)
def _merge_query(heap_s, heap_i, j, k, out_s, out_i):  # type: ignore[no-untyped-def]
    n_chunks, _, kk = heap_s.shape
    cand_s = heap_s[:, j, :].copy().reshape(n_chunks * kk)
    cand_i = heap_i[:, j, :].copy().reshape(n_chunks * kk)
    # By score, then row: the result depends on neither the thread schedule nor the number of chunks.
    by_row = np.argsort(cand_i, kind="mergesort")
    order = by_row[np.argsort(-cand_s[by_row], kind="mergesort")]
    filled = 0
    p = 0
    while filled < k and p < order.size:
        q = order[p]
        if cand_i[q] >= 0:
            out_s[j, filled] = cand_s[q]
            out_i[j, filled] = cand_i[q]
            filled += 1
        p += 1


@njit(parallel=True, cache=True, nogil=True)
def _merge_heaps(heap_s: np.ndarray, heap_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = heap_s.shape[1]
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    for j in prange(m):
        _merge_query(heap_s, heap_i, j, k, out_s, out_i)
    return out_s, out_i


@njit(cache=True, nogil=True)
def _merge_heaps_serial(heap_s: np.ndarray, heap_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    # _merge_heaps without a parallel region, after BLAS: Numba's threads would spin into its next call.
    m = heap_s.shape[1]
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    for j in range(m):
        _merge_query(heap_s, heap_i, j, k, out_s, out_i)
    return out_s, out_i


_SELECT_BLOCK = 64


# Serial on purpose: BLAS's threads spin-wait between tiles, and a parallel selection's threads then spin
# after it, each pool slowing the other's next call. Each block of scores is first reduced to its maximum (a
# loop LLVM vectorises; the flags allow reordering but keep infinities, as the heaps start at -inf), and only
# a block whose maximum beats the query's worst kept score is scanned one score at a time.
@njit(cache=True, nogil=True, fastmath={"nnan", "nsz", "reassoc"})
def _select_tile(
    scores: np.ndarray, t0: int, alive: np.ndarray, heap_s: np.ndarray, heap_i: np.ndarray, k: int
) -> None:
    m, w = scores.shape
    for j in range(m):
        hs = heap_s[0, j]
        hi = heap_i[0, j]
        row = scores[j]
        worst = hs[0]
        for b0 in range(0, w, _SELECT_BLOCK):
            b1 = min(w, b0 + _SELECT_BLOCK)
            top = row[b0]
            for c in range(b0 + 1, b1):
                top = max(top, row[c])
            if top <= worst:
                continue
            for c in range(b0, b1):
                if row[c] > worst and alive[t0 + c]:
                    _heap_offer(hs, hi, k, row[c], t0 + c)
                    worst = hs[0]


# The split path's scores come transposed, a row of the database per line (the sgemm of a database tile by
# the queries ran ~18% faster at 64 queries than the other way round, bench/exact.py's A/B): each line is
# checked against every query's worst kept score, and rows still arrive in increasing order per query.
@njit(cache=True, nogil=True, fastmath={"nnan", "nsz", "reassoc"})
def _select_tile_t(
    scores: np.ndarray, t0: int, alive: np.ndarray, heap_s: np.ndarray, heap_i: np.ndarray, k: int
) -> None:
    w, m = scores.shape
    worst = np.empty(m, np.float32)
    for j in range(m):
        worst[j] = heap_s[0, j, 0]
    for r in range(w):
        line = scores[r]
        hit = False
        for j in range(m):
            hit |= line[j] > worst[j]
        if not hit or not alive[t0 + r]:
            continue
        for j in range(m):
            if line[j] > worst[j]:
                hs = heap_s[0, j]
                _heap_offer(hs, heap_i[0, j], k, line[j], t0 + r)
                worst[j] = hs[0]


def _blas_heaps(
    db: np.ndarray, n: int, alive: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    m = queries.shape[0]
    heap_s = np.full((1, m, k), -np.inf, dtype=np.float32)
    heap_i = np.full((1, m, k), -1, dtype=np.int64)
    buf = np.empty((m, _BLAS_TILE_ROWS), dtype=np.float32)
    for t0 in range(0, n, _BLAS_TILE_ROWS):
        t1 = min(n, t0 + _BLAS_TILE_ROWS)
        out = buf if t1 - t0 == _BLAS_TILE_ROWS else np.empty((m, t1 - t0), dtype=np.float32)
        np.matmul(queries, db[t0:t1].T, out=out)
        _select_tile(out, t0, alive, heap_s, heap_i, k)
    return heap_s, heap_i


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _blas_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != threads:
            _pool = ThreadPoolExecutor(threads, "topk-blas")
        return _pool


def _blas_heaps_split(
    db: np.ndarray, n: int, alive: np.ndarray, queries: np.ndarray, k: int, threads: int, select: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    # The scores come from the C kernel where it is built (kernels/scores.py), else from BLAS: same layout, a
    # database row per line, so the selection below is the same.
    # One contiguous chunk of tiles per thread, each thread's sgemm on its own core (one BLAS thread) and its
    # own heaps: a core never idles while the other selects. _merge_heaps_serial merges the chunks in chunk
    # order, so the result does not depend on the schedule.
    # Each thread's tile of scores stays in its own core's L2 (256 KiB: 1,024 rows at 64 queries), since
    # sgemm writes it once per block of the 784-long dot products; tiles of 8 MiB ran ~4% slower at 64
    # queries once the BLAS window really held numpy's BLAS at one thread (kernels/blas.py).
    m = queries.shape[0]
    per = (n + threads - 1) // threads
    tile = min(per, max(_SPLIT_TILE_MIN_ROWS, _SPLIT_TILE_BYTES // (4 * m)))
    heap_s = np.full((threads, m, k), -np.inf, dtype=np.float32)
    heap_i = np.full((threads, m, k), -1, dtype=np.int64)
    native = scores.available()
    qt = scores.padded_transpose(queries) if native else queries.T

    def chunk(c: int) -> None:
        buf = np.empty((tile, qt.shape[1]), dtype=np.float32)
        end = min(n, (c + 1) * per)
        for t0 in range(c * per, end, tile):
            t1 = min(end, t0 + tile)
            if native:
                scores.score_tile(db, t0, t1, qt, buf)
                out = buf[: t1 - t0, :m]  # the padding queries' columns are left out
            else:
                out = buf if t1 - t0 == tile else np.empty((t1 - t0, m), dtype=np.float32)
                np.matmul(db[t0:t1], qt, out=out)
            if select:  # off only in bench/exact.py, which times the multiply alone as the kernel's ceiling
                _select_tile_t(out, t0, alive, heap_s[c : c + 1], heap_i[c : c + 1], k)

    with contextlib.nullcontext() if native else blas.one_thread_per_call():
        for f in [_blas_pool(threads).submit(chunk, c) for c in range(threads)]:
            f.result()
    return heap_s, heap_i


def trim_unfilled(scores: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the unfilled slots (row -1) that fewer live rows than k leave at the end of each result row."""
    if rows.size and rows[:, -1].min() < 0:
        width = int((rows >= 0).sum(axis=1).min())
        return scores[:, :width], rows[:, :width]
    return scores, rows


def topk_inner_product(
    db: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    n: int | None = None,
    alive: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Best k rows of ``db[:n]`` by inner product for each query.

    Returns ``(scores, rows)``, both shaped ``(len(queries), k')`` with ``k' = min(k, live rows)``, best
    first. Rows whose ``alive`` flag is 0 are skipped. ``db`` and ``queries`` must be C-contiguous float32.
    """
    if db.dtype != np.float32 or queries.dtype != np.float32:
        raise TypeError("db and queries must be float32")
    if db.ndim != 2 or queries.ndim != 2 or db.shape[1] != queries.shape[1]:
        raise ValueError(f"shape mismatch: db {db.shape}, queries {queries.shape}")
    if not (db.flags.c_contiguous and queries.flags.c_contiguous):
        raise ValueError("db and queries must be C-contiguous")
    n = db.shape[0] if n is None else n
    if not 0 <= n <= db.shape[0]:
        raise ValueError(f"n={n} outside 0..{db.shape[0]}")
    if alive is None:
        alive = np.ones(n, dtype=np.uint8)
        live = n
    else:
        if alive.dtype != np.uint8 or alive.shape[0] < n:
            raise ValueError("alive must be a uint8 array covering the first n rows")
        live = int(np.count_nonzero(alive[:n]))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, live)
    m = queries.shape[0]
    if k == 0 or m == 0:
        return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
    if m >= _BLAS_MIN_QUERIES:
        threads = min(numba.get_num_threads(), (n + _BLAS_TILE_ROWS - 1) // _BLAS_TILE_ROWS)
        if threads > 1 and (scores.available() or blas.available()):
            heap_s, heap_i = _blas_heaps_split(db, n, alive, queries, k, threads)
        else:
            heap_s, heap_i = _blas_heaps(db, n, alive, queries, k)
        return _merge_heaps_serial(heap_s, heap_i, k)
    # One chunk per thread, but never chunks so small that the per-chunk heaps cost more than the scan.
    n_chunks = max(1, min(numba.get_num_threads(), n // max(4 * k, 1024)))
    heap_s, heap_i = _chunk_heaps(db, n, alive, queries, k, n_chunks)
    return _merge_heaps(heap_s, heap_i, k)


def topk_rows(db: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of the given ``rows`` of ``db`` for each query (a filtered exact search): the rows are gathered
    into one contiguous block and scanned by the fused kernel. Returns ``(scores, rows)`` like
    ``topk_inner_product``, rows numbered as in ``db``."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        m = queries.shape[0]
        return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
    block = np.ascontiguousarray(db[rows])
    scores, local = topk_inner_product(block, np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, rows[local]
