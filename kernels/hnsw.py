"""The HNSW fallback: usearch's C++ graph index over the same rows as the collection's storage.

usearch keys are the storage row numbers, so its hits map to ids exactly as the exact and LSH indexes'
do. Vectors are stored unit-norm and searched by inner product ("ip"), which is cosine for them.

usearch's ``remove`` and ``rename`` are not safe against concurrent searches, so every call goes through
``lock``; callers that must check something in the same critical section as a search hold it themselves and
call the ``*_locked`` methods.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from usearch.index import Index


@dataclass(frozen=True)
class HNSWParams:
    connectivity: int = 16  # M: graph edges per node
    expansion_add: int = 128  # ef_construction
    expansion_search: int = 64  # ef: candidate list length at query time
    # How the graph stores its copy of the vectors: f32, f16 (half the memory) or i8 (a quarter; unit
    # vectors' components are scaled into [-127, 127]). Searches still return the stored float32 scores.
    dtype: str = "f32"


DTYPES = ("f32", "f16", "i8")


HNSW_DEFAULTS = HNSWParams()
# Beyond these usearch still works, but memory (M) or build time (ef_construction) grows with no recall to
# show for it on the data sets measured in bench/ann.py.
HNSW_CONNECTIVITY_RANGE = (4, 64)
HNSW_EXPANSION_ADD_RANGE = (16, 1024)


class HNSWIndex:
    def __init__(self, dim: int, params: HNSWParams, threads: int = 0) -> None:
        self.dim = dim
        self.params = params
        self.threads = threads
        self._index = Index(
            ndim=dim,
            # usearch's i8 inner product is the raw integer product; its i8 cosine is calibrated. For the unit
            # vectors of cosine collections the two rank alike, and inner-product collections refuse i8.
            metric="cos" if params.dtype == "i8" else "ip",
            dtype=params.dtype,
            connectivity=params.connectivity,
            expansion_add=params.expansion_add,
            expansion_search=params.expansion_search,
        )
        self._ef = params.expansion_search
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._index)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            keys = np.asarray(rows, np.uint64)
            with self.lock:
                self._index.add(keys, np.ascontiguousarray(vectors, np.float32), threads=self.threads)

    def remove(self, rows: np.ndarray) -> None:
        if len(rows):
            with self.lock:
                self._index.remove(np.asarray(rows, np.uint64))

    def rename(self, old_rows: np.ndarray, new_rows: np.ndarray) -> None:
        """Give the entries keyed ``old_rows`` the keys ``new_rows`` (after a compaction of the storage)."""
        with self.lock:
            self._index.rename(np.asarray(old_rows, np.uint64), np.asarray(new_rows, np.uint64))

    def search(self, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            return self.search_locked(queries, k, ef)

    def search_locked(
        self, queries: np.ndarray, k: int, ef: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``: inner products (1 - usearch's ip distance), best first; missing hits are -1.
        The caller holds ``lock``."""
        queries = np.ascontiguousarray(queries, np.float32)
        ef = max(k, ef or self.params.expansion_search)
        if ef != self._ef:
            # usearch defines a setter for this property; its type stub hides it.
            self._index.expansion_search = ef  # type: ignore[misc]
            self._ef = ef
        if len(queries) == 1:
            # The single-query path skips usearch's batch bookkeeping; this is the latency-critical case.
            one = self._index.search(queries[0], k, threads=self.threads)
            keys = np.asarray(one.keys, dtype=np.int64)
            scores = 1.0 - np.asarray(one.distances, dtype=np.float32)
            if len(keys) < k:
                keys = np.concatenate([keys, np.full(k - len(keys), -1, np.int64)])
                scores = np.concatenate([scores, np.full(k - len(scores), -np.inf, np.float32)])
            return scores[None, :], keys[None, :]
        res = self._index.search(queries, k, threads=self.threads)
        keys = np.asarray(res.keys, dtype=np.int64).reshape(len(queries), -1)
        dist = np.asarray(res.distances, dtype=np.float32).reshape(len(queries), -1)
        counts = np.asarray(res.counts).reshape(-1)  # type: ignore[union-attr]  # BatchMatches: several queries
        if (counts == keys.shape[1]).all():
            return 1.0 - dist, keys
        valid = np.arange(keys.shape[1])[None, :] < counts[:, None]
        return np.where(valid, 1.0 - dist, -np.inf).astype(np.float32), np.where(valid, keys, -1)

    def save(self, path: Path) -> None:
        with self.lock:
            self._index.save(str(path))

    def load(self, path: Path) -> None:
        with self.lock:
            self._index.load(str(path))
