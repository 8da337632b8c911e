"""An exact (brute-force) inner-product index over a growable float32 matrix.

One writer at a time (the caller holds a lock), any number of concurrent readers without locks: a reader
takes one consistent snapshot of ``(matrix, alive flags, row count)`` from a single attribute, writers only
append rows past that count or clear alive flags, and growth copies into new arrays before publishing them.
Rows are never rewritten in place: replacing a vector is "append the new row, clear the old one".
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from kernels.topk import topk_inner_product, trim_unfilled


@dataclass(frozen=True)
class _State:
    vectors: np.ndarray  # (capacity, dim) float32
    alive: np.ndarray  # (capacity,) uint8
    n: int  # rows in use (live or cleared)


class ExactIndex:
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        cap = max(16, capacity)
        self._state = _State(np.zeros((cap, dim), np.float32), np.zeros(cap, np.uint8), 0)
        self._live = 0
        self._write_lock = threading.Lock()

    @property
    def rows(self) -> int:
        """Rows in use, including cleared ones (the next row number to be handed out)."""
        return self._state.n

    def __len__(self) -> int:
        return self._live

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append rows; returns their row numbers."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (m, {self.dim}), got {vectors.shape}")
        m = vectors.shape[0]
        with self._write_lock:
            st = self._state
            if st.n + m > st.vectors.shape[0]:
                cap = max(st.n + m, 2 * st.vectors.shape[0])
                grown_v = np.zeros((cap, self.dim), np.float32)
                grown_a = np.zeros(cap, np.uint8)
                grown_v[: st.n] = st.vectors[: st.n]
                grown_a[: st.n] = st.alive[: st.n]
                st = _State(grown_v, grown_a, st.n)
            st.vectors[st.n : st.n + m] = vectors
            st.alive[st.n : st.n + m] = 1
            rows = np.arange(st.n, st.n + m, dtype=np.int64)
            # Publish only after the rows are written, so a reader never sees a row before its data.
            self._state = _State(st.vectors, st.alive, st.n + m)
            self._live += m
            return rows

    def remove(self, rows: np.ndarray) -> int:
        """Clear rows; returns how many were live."""
        rows = np.asarray(rows, dtype=np.int64)
        with self._write_lock:
            st = self._state
            if rows.size and (rows.min() < 0 or rows.max() >= st.n):
                raise IndexError(f"row out of range 0..{st.n - 1}")
            rows = np.unique(rows)
            was = int(np.count_nonzero(st.alive[rows]))
            st.alive[rows] = 0
            self._live -= was
            return was

    def vector(self, row: int) -> np.ndarray:
        st = self._state
        if not 0 <= row < st.n:
            raise IndexError(f"row {row} out of range 0..{st.n - 1}")
        return st.vectors[row].copy()

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        return self._state.vectors[np.asarray(rows, dtype=np.int64)]

    def live_rows(self) -> np.ndarray:
        st = self._state
        return np.flatnonzero(st.alive[: st.n]).astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the best ``min(k, len(self))`` live rows per query, best first."""
        st = self._state
        q = np.ascontiguousarray(queries, dtype=np.float32)
        # A remove racing this search can leave fewer live rows than were counted before the scan.
        return trim_unfilled(*topk_inner_product(st.vectors, q, k, n=st.n, alive=st.alive))
