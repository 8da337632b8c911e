"""Random-projection LSH for cosine similarity, with multi-probe and exact re-ranking, in Numba.

Each of L tables hashes a vector to K sign bits of random projections (Charikar's SimHash); vectors that
share a code share a bucket. A query probes its own bucket and then the buckets reached by flipping the bits
whose projections were closest to zero (multi-probe LSH, Lv et al. 2007): those are the bits most likely to
differ for a near neighbour. Candidates from all probes of all tables are de-duplicated and re-ranked by the
exact inner product, so scores are exact and only recall is approximate.

Vectors are hashed after subtracting a centre (the data mean): photo features are all non-negative, so
hyperplanes through the origin would cut the data unevenly and put most of it in a few huge buckets.

Buckets are one sorted array of codes per table, searched by bisection. Rows added after a build go to an
unsorted delta that every query scans exactly; ``rebuild`` folds it in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from kernels.topk import _heap_offer, _merge_heaps

# Below this share of the data's energy in its top principal directions, candidates are scored exactly.
MIN_PCA_ENERGY = 0.9
# Multi-probe perturbs at most this many of the lowest-margin bits per table, at most three at a time.
_PROBE_BITS = 10
_PROBE_SETS = [s for r in range(0, 4) for s in itertools.combinations(range(_PROBE_BITS), r)]
MAX_PROBES = len(_PROBE_SETS)


def _probe_table() -> tuple[np.ndarray, np.ndarray]:
    members = np.full((MAX_PROBES, 3), -1, np.int64)
    for n, s in enumerate(_PROBE_SETS):
        members[n, : len(s)] = s
    sizes = np.array([len(s) for s in _PROBE_SETS], np.int64)
    return members, sizes


_PROBE_MEMBERS, _PROBE_SIZES = _probe_table()


@njit(parallel=True, cache=True, nogil=True)
def _pack_codes(proj: np.ndarray, tables: int, bits: int) -> np.ndarray:
    n = proj.shape[0]
    codes = np.zeros((n, tables), np.uint64)
    for i in prange(n):
        for t in range(tables):
            c = np.uint64(0)
            for b in range(bits):
                if proj[i, t * bits + b] > 0:
                    c |= np.uint64(1) << np.uint64(b)
            codes[i, t] = c
    return codes


@njit(parallel=True, cache=True, nogil=True)
def _probe_codes(
    proj: np.ndarray, tables: int, bits: int, probes: int, members: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    """(m, tables, probes) codes to look up: each table's own code first, then ever less likely buckets."""
    m = proj.shape[0]
    low = min(bits, members.max() + 1)
    out = np.zeros((m, tables, probes), np.uint64)
    for q in prange(m):
        cost = np.empty(members.shape[0], np.float64)
        for t in range(tables):
            p = proj[q, t * bits : (t + 1) * bits]
            base = np.uint64(0)
            for b in range(bits):
                if p[b] > 0:
                    base |= np.uint64(1) << np.uint64(b)
            order = np.argsort(np.abs(p))[:low]  # bits whose sign is least certain
            # A perturbation's cost is the sum of the squared margins it crosses (query-directed probing).
            for s in range(members.shape[0]):
                c = 0.0
                for j in range(sizes[s]):
                    if members[s, j] >= low:
                        c = np.inf
                        break
                    v = p[order[members[s, j]]]
                    c += v * v
                cost[s] = c
            ranked = np.argsort(cost, kind="mergesort")
            for r in range(probes):
                s = ranked[r]
                code = base
                for j in range(sizes[s]):
                    code ^= np.uint64(1) << np.uint64(order[members[s, j]])
                out[q, t, r] = code
    return out


@njit(inline="always", nogil=True)
def _offer_reduced(row, reduced, rq, alive, hs, hi, r_keep):  # type: ignore[no-untyped-def]
    # The liveness byte is read only for a row that would enter the heap: one random read fewer for
    # almost every candidate.
    s = np.float32(0.0)
    for x in range(reduced.shape[1]):
        s += np.float32(reduced[row, x]) * rq[x]
    if s > hs[0] and alive[row]:
        _heap_offer(hs, hi, r_keep, s, row)


@njit(inline="always", nogil=True)
def _first_visit(seen, row):  # type: ignore[no-untyped-def]
    w = row >> 6
    bit = np.uint64(1) << np.uint64(row & 63)
    if seen[w] & bit:
        return False
    seen[w] |= bit
    return True


@njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _lsh_search(
    db: np.ndarray,
    reduced: np.ndarray,
    alive: np.ndarray,
    queries: np.ndarray,
    reduced_q: np.ndarray,
    probe_codes: np.ndarray,
    sorted_codes: np.ndarray,
    orders: np.ndarray,
    delta: np.ndarray,
    k: int,
    r_keep: int,
    n_chunks: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, d = queries.shape
    tables, probes = probe_codes.shape[1], probe_codes.shape[2]
    n_sorted = sorted_codes.shape[1]
    heap_s = np.full((1, m, k), -np.inf, dtype=np.float32)
    heap_i = np.full((1, m, k), -1, dtype=np.int64)
    checked = np.zeros(m, np.int64)
    per = (m + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        # A bitset of rows seen, cleared per query, so a row is scored once however many tables and probes
        # find it: 7.5 KB at 60k rows, in L1, where a stamp per row (8 bytes) was one more cache miss per
        # candidate.
        seen = np.zeros((db.shape[0] + 63) >> 6, np.uint64)
        rs = np.empty(r_keep, np.float32)
        ri = np.empty(r_keep, np.int64)
        for q in range(c * per, min(m, (c + 1) * per)):
            # Stage 1: every candidate scored on the reduced (PCA, int8) vectors; the best r_keep survive.
            seen[:] = 0
            rs[:] = -np.inf
            ri[:] = -1
            rq = reduced_q[q]
            for t in range(tables):
                codes_t = sorted_codes[t]
                for p in range(probes):
                    code = probe_codes[q, t, p]
                    pos = np.searchsorted(codes_t, code)
                    while pos < n_sorted and codes_t[pos] == code:
                        row = orders[t, pos]
                        pos += 1
                        if _first_visit(seen, row):
                            checked[q] += 1
                            _offer_reduced(row, reduced, rq, alive, rs, ri, r_keep)
            for j in range(delta.shape[0]):
                row = delta[j]
                if _first_visit(seen, row):
                    checked[q] += 1
                    _offer_reduced(row, reduced, rq, alive, rs, ri, r_keep)
            # Stage 2: the survivors re-ranked by the exact inner product.
            hs = heap_s[0, q]
            hi = heap_i[0, q]
            for j in range(r_keep):
                row = ri[j]
                if row < 0:
                    continue
                s = np.float32(0.0)
                for x in range(d):
                    s += db[row, x] * queries[q, x]
                _heap_offer(hs, hi, k, s, row)
    out_s, out_i = _merge_heaps(heap_s, heap_i, k)
    return out_s, out_i, checked


@dataclass(frozen=True)
class _Tables:
    """Everything a search reads, swapped as one object so a concurrent add is never half seen."""

    sorted_codes: np.ndarray  # (tables, n) uint64
    orders: np.ndarray  # (tables, n) storage rows
    reduced: np.ndarray | None  # (storage rows, r) int8 PCA codes; None: stage 1 uses the full vectors
    delta: np.ndarray  # rows added since the build


@dataclass(frozen=True)
class LSHParams:
    bits: int = 16  # K: sign bits per table (<= 64)
    tables: int = 16  # L
    probes: int = 8  # buckets looked up per table and query (<= MAX_PROBES)
    reduced_dim: int = 64  # PCA width candidates are first scored at (0: score every candidate exactly)
    rerank: int = 100  # candidates re-ranked exactly per query (at least k)
    seed: int = 0


class RandomProjectionLSH:
    """An LSH index over rows of an external float32 matrix (the collection's vector storage)."""

    def __init__(self, dim: int, params: LSHParams) -> None:
        if not 1 <= params.bits <= 64:
            raise ValueError(f"bits must be 1..64, got {params.bits}")
        if params.tables < 1:
            raise ValueError(f"tables must be >= 1, got {params.tables}")
        self.dim = dim
        self.params = params
        rng = np.random.default_rng(params.seed)
        self._planes = np.ascontiguousarray(
            rng.standard_normal((params.tables * params.bits, dim)), np.float32
        )
        self._centre = np.zeros(dim, np.float32)
        self._pca: np.ndarray | None = None
        self._scale = np.ones(0, np.float32)  # per PCA direction: code = round(value / scale)
        empty = np.zeros((params.tables, 0), np.int64)
        self._tables = _Tables(
            empty.astype(np.uint64), empty, np.zeros((0, dim), np.float32), np.zeros(0, np.int64)
        )

    def _project(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self._centre) @ self._planes.T, dtype=np.float32)

    def build(self, db: np.ndarray, rows: np.ndarray) -> None:
        """Index ``db[rows]`` from scratch (the centre is refitted on them)."""
        rows = np.asarray(rows, np.int64)
        if len(rows):
            self._centre = db[rows].mean(axis=0).astype(np.float32)
        reduced = self._fit_reduction(db, rows)
        codes = _pack_codes(self._project(db[rows]), self.params.tables, self.params.bits)
        order = np.argsort(codes, axis=0, kind="stable").T  # (tables, n)
        self._tables = _Tables(
            np.ascontiguousarray(np.take_along_axis(codes.T, order, axis=1)),
            np.ascontiguousarray(rows[order]),
            reduced,
            np.zeros(0, np.int64),
        )

    def _fit_reduction(self, db: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """int8 codes of the rows' PCA-reduced vectors for stage 1, or None to score candidates on the full
        vectors. A code is one cache line at 64 directions (a float32 copy was four), and stage 1 is a random
        gather of thousands of candidates per query: on machines whose memory is slower it is the cost."""
        self._pca = None
        r = min(self.params.reduced_dim, self.dim)
        if r == 0 or r == self.dim or len(rows) < 2:
            return None
        # Uncentred principal directions: they keep inner products, which is what stage 1 ranks by.
        sample = db[rows[:: max(1, len(rows) // 20000)]].astype(np.float64)
        vals, vecs = np.linalg.eigh(sample.T @ sample)
        kept = float(vals[::-1][:r].sum() / max(vals.sum(), 1e-12))
        if kept < MIN_PCA_ENERGY:
            # Data without a low-dimensional core (kept energy 0.3 for 2,000 clusters in 300-d): a reduced
            # score would rank candidates badly, and more probes would then lower recall.
            return None
        self._pca = np.ascontiguousarray(vecs[:, ::-1][:, :r], dtype=np.float32)
        self._scale = np.maximum(np.abs(sample @ self._pca).max(axis=0), 1e-12).astype(np.float32) / 127
        reduced = np.zeros((db.shape[0], r), np.int8)
        reduced[rows] = self._codes(db[rows])
        return reduced

    def _codes(self, x: np.ndarray) -> np.ndarray:
        # Rows added later may lie past the sample's range: clipped, which only blunts their stage-1 score
        # (stage 2 re-ranks exactly).
        return np.clip(np.rint((x @ self._pca) / self._scale), -127, 127).astype(np.int8)

    def add(self, db: np.ndarray, rows: np.ndarray) -> None:
        """Rows appended to the storage since the build: scanned until the next ``build``. One writer."""
        rows = np.asarray(rows, np.int64)
        st = self._tables
        reduced = st.reduced
        if reduced is not None and self._pca is not None:
            if len(rows) and rows.max() >= reduced.shape[0]:
                reduced = np.zeros((max(db.shape[0], rows.max() + 1), reduced.shape[1]), np.int8)
                reduced[: st.reduced.shape[0]] = st.reduced  # type: ignore[union-attr]
            reduced[rows] = self._codes(db[rows])
        self._tables = _Tables(st.sorted_codes, st.orders, reduced, np.concatenate([st.delta, rows]))

    @property
    def delta_size(self) -> int:
        return len(self._tables.delta)

    @property
    def indexed(self) -> int:
        return int(self._tables.sorted_codes.shape[1])

    def search(
        self,
        db: np.ndarray,
        alive: np.ndarray,
        queries: np.ndarray,
        k: int,
        probes: int | None = None,
        n: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(scores, rows, candidates scored per query)``; scores are exact inner products. Rows at or past
        ``n`` (default: all of ``db``) are ignored, so a reader holding an older, shorter view of the storage
        never follows a newer delta row out of it."""
        probes = self.params.probes if probes is None else probes
        if not 1 <= probes <= MAX_PROBES:
            raise ValueError(f"probes must be 1..{MAX_PROBES}, got {probes}")
        if probes > 2**self.params.bits:
            probes = 2**self.params.bits
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        codes = _probe_codes(
            self._project(queries), self.params.tables, self.params.bits, probes, _PROBE_MEMBERS, _PROBE_SIZES
        )
        m = len(queries)
        n_chunks = max(1, min(numba.get_num_threads(), m))
        st = self._tables
        reduced, reduced_q = (
            (db, queries)
            if st.reduced is None or self._pca is None
            else (st.reduced, (queries @ self._pca) * self._scale)
        )
        reduced_q = np.ascontiguousarray(reduced_q, dtype=np.float32)
        r_keep = max(k, self.params.rerank)
        n = db.shape[0] if n is None else n
        delta = st.delta[st.delta < n] if len(st.delta) and st.delta.max() >= n else st.delta
        scores, rows, checked = _lsh_search(
            db, reduced, alive, queries, reduced_q, codes, st.sorted_codes, st.orders, delta,
            k, r_keep, n_chunks,
        )  # fmt: skip
        # Fewer than k candidates leave -1 slots at the end of a row; they are not results.
        return scores, rows, checked
