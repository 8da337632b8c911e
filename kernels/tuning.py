"""Choosing an approximate index for a recall target, measured on a sample of the collection's own data.

The sample's queries are stored vectors; each query's own row is left out of both the exact answer and the
approximate one, so recall is measured on true neighbours, as a "more like this" search would see them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels.hnsw import HNSWIndex, HNSWParams
from kernels.lsh import LSHParams, RandomProjectionLSH
from kernels.topk import topk_inner_product

AUTO_EXACT_BELOW = 10_000
LSH_GRID = ((12, 16), (14, 16), (16, 16), (16, 24))
PROBES = (2, 4, 8, 16, 32, 64, 128, 176)
# ef below 32 is left out: its recall swings by several points between two builds of the same graph
# (usearch builds on several threads), more than a 200-query sample can promise.
EFS = (32, 64, 128, 256, 512, 1024)
K = 10


@dataclass(frozen=True)
class Measured:
    recall: float
    qps: float


def _recall_without_self(found: np.ndarray, truth: np.ndarray, selves: np.ndarray) -> float:
    total = 0.0
    for f, t, s in zip(found, truth, selves, strict=True):
        t = [r for r in t if r != s][:K]
        f = [r for r in f if r != s and r >= 0][:K]
        total += len(set(f) & set(t)) / max(1, len(t))
    return total / len(found)


def _measure(
    search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray, truth: np.ndarray, selves: np.ndarray
) -> Measured:
    search(queries[:1])  # warm-up (compilation, caches)
    t0 = time.perf_counter()
    found = np.concatenate([search(queries[i : i + 1]) for i in range(len(queries))])
    seconds = time.perf_counter() - t0
    return Measured(_recall_without_self(found, truth, selves), len(queries) / seconds)


def sample_queries(
    db: np.ndarray, rows: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(queries, selves, truth)``: ``n`` stored rows as queries and their exact top-(K+1) rows."""
    rng = np.random.default_rng(seed)
    selves = rng.choice(rows, size=min(n, len(rows)), replace=False)
    queries = np.ascontiguousarray(db[selves])
    alive = np.zeros(db.shape[0], np.uint8)
    alive[rows] = 1
    _, truth = topk_inner_product(db, queries, K + 1, alive=alive)
    return queries, selves, truth


@dataclass
class TunedLSH:
    index: RandomProjectionLSH
    measured: Measured
    met: bool  # False: no setting reached the target, and this is the one with the highest recall


def tune_lsh(
    db: np.ndarray, rows: np.ndarray, target: float, *, sample: int = 200, seed: int = 0
) -> TunedLSH:
    """The fastest LSH (over a small grid of bits, tables and probes) whose recall@10 reaches ``target``; if
    none does, the setting with the highest recall."""
    queries, selves, truth = sample_queries(db, rows, sample, seed)
    alive = np.zeros(db.shape[0], np.uint8)
    alive[rows] = 1
    best: TunedLSH | None = None
    for bits, tables in LSH_GRID:
        lsh = RandomProjectionLSH(db.shape[1], LSHParams(bits=bits, tables=tables, seed=seed))
        lsh.build(db, rows)
        for probes in PROBES:

            def search(q: np.ndarray, lsh: RandomProjectionLSH = lsh, probes: int = probes) -> np.ndarray:
                return lsh.search(db, alive, q, K + 1, probes)[1]

            m = _measure(search, queries, truth, selves)
            met = m.recall >= target
            better = (
                best is None
                or (met and (not best.met or m.qps > best.measured.qps))
                or (not met and not best.met and m.recall > best.measured.recall)
            )
            if better:
                # Probes are a query-time setting: keep this build, remember the count.
                lsh.params = dataclasses.replace(lsh.params, probes=probes)
                best = TunedLSH(lsh, m, met)
            if met:
                break  # more probes only cost more
    if best is None:
        raise ValueError("empty tuning grid")
    return best


def tune_hnsw_ef(
    index: HNSWIndex, db: np.ndarray, rows: np.ndarray, target: float, *, sample: int = 200, seed: int = 0
) -> tuple[int, Measured]:
    """The smallest ef whose recall@10 reaches ``target`` (or the largest tried)."""
    queries, selves, truth = sample_queries(db, rows, sample, seed)
    m = Measured(0.0, 0.0)
    for ef in EFS:

        def search(q: np.ndarray, ef: int = ef) -> np.ndarray:
            return index.search(q, K + 1, ef)[1]

        m = _measure(search, queries, truth, selves)
        if m.recall >= target:
            return ef, m
    return EFS[-1], m


def exact_rate(db: np.ndarray, rows: np.ndarray, *, sample: int = 50, seed: int = 0) -> float:
    queries, selves, truth = sample_queries(db, rows, sample, seed)
    alive = np.zeros(db.shape[0], np.uint8)
    alive[rows] = 1
    return _measure(lambda q: topk_inner_product(db, q, K + 1, alive=alive)[1], queries, truth, selves).qps


def build_hnsw(
    db: np.ndarray,
    rows: np.ndarray,
    params: HNSWParams,
    progress: Callable[[float], None] | None = None,
    chunk: int = 50_000,
) -> HNSWIndex:
    """An HNSW graph of ``db[rows]``, added in chunks so that ``progress`` (0..1) can be reported."""
    index = HNSWIndex(db.shape[1], params)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        index.add(part, db[part])
        if progress is not None:
            progress(min(1.0, (start + len(part)) / len(rows)))
    return index
