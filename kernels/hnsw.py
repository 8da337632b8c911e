"""The HNSW fallback: usearch's C++ graph index over the same rows as the collection's storage.

usearch keys are the storage row numbers, so its hits map to ids exactly as the exact and LSH indexes'
do. Vectors are stored unit-norm and searched by inner product ("ip"), which is cosine for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from usearch.index import Index


@dataclass(frozen=True)
class HNSWParams:
    connectivity: int = 16  # M: graph edges per node
    expansion_add: int = 128  # ef_construction
    expansion_search: int = 64  # ef: candidate list length at query time


class HNSWIndex:
    def __init__(self, dim: int, params: HNSWParams, threads: int = 0) -> None:
        self.dim = dim
        self.params = params
        self.threads = threads
        self._index = Index(
            ndim=dim,
            metric="ip",
            dtype="f32",
            connectivity=params.connectivity,
            expansion_add=params.expansion_add,
            expansion_search=params.expansion_search,
        )

    def __len__(self) -> int:
        return len(self._index)

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            keys = np.asarray(rows, np.uint64)
            self._index.add(keys, np.ascontiguousarray(vectors, np.float32), threads=self.threads)

    def remove(self, rows: np.ndarray) -> None:
        if len(rows):
            self._index.remove(np.asarray(rows, np.uint64))

    def search(self, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)``: inner products (1 - usearch's ip distance), best first; missing hits are -1."""
        queries = np.ascontiguousarray(queries, np.float32)
        # usearch defines a setter for this property; its type stub hides it.
        self._index.expansion_search = max(k, ef or self.params.expansion_search)  # type: ignore[misc]
        res = self._index.search(queries, k, threads=self.threads)
        keys = np.asarray(res.keys, dtype=np.int64).reshape(len(queries), -1)
        dist = np.asarray(res.distances, dtype=np.float32).reshape(len(queries), -1)
        # usearch answers a one-row batch with single-query Matches, which have no per-row counts.
        counts = np.asarray(res.counts if hasattr(res, "counts") else [len(res.keys)]).reshape(-1)
        width = keys.shape[1]
        valid = np.arange(width)[None, :] < counts[:, None]
        return np.where(valid, 1.0 - dist, -np.inf).astype(np.float32), np.where(valid, keys, -1)

    def save(self, path: Path) -> None:
        self._index.save(str(path))

    def load(self, path: Path) -> None:
        self._index.load(str(path))
