"""Keeps a collection's approximate index (LSH or HNSW) in step with its exact storage, and chooses it.

Policy: ``exact`` never builds one; ``lsh`` and ``hnsw`` tune their query-time effort to the collection's
recall target on a sample of its own vectors; ``auto`` stays exact below 10,000 items and above that takes
LSH if its tuned setting meets the target at least twice as fast as exact search, else HNSW. The choice is
revisited whenever the collection has doubled since it was made. Building and tuning run in the writer's
path (under the collection's lock): a few seconds at 100,000 items; searches go on meanwhile.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from kernels import ExactIndex
from kernels.hnsw import HNSWIndex, HNSWParams
from kernels.lsh import MAX_PROBES, LSHParams, RandomProjectionLSH
from kernels.topk import trim_unfilled
from kernels.tuning import AUTO_EXACT_BELOW, build_hnsw, exact_rate, tune_hnsw_ef, tune_lsh

log = logging.getLogger("visionsearch.index")

INDEX_KINDS = ("auto", "exact", "lsh", "hnsw")
_MIN_APPROX = 1000  # below this an approximate index is never worth its upkeep


class AnnManager:
    def __init__(self, kind: str, recall_target: float, name: str) -> None:
        self.kind = kind
        self.recall_target = recall_target
        # Tuned on 200 sampled queries: aim a little above the target so that other queries meet it too.
        self._tune_target = min(1.0, recall_target + 0.01)
        self.name = name
        self.in_use = "exact"
        self.reason = "exact search"
        self._lsh: RandomProjectionLSH | None = None
        self._hnsw: HNSWIndex | None = None
        self._hnsw_ef = 64
        self._hnsw_lock = threading.Lock()  # usearch's remove is not safe against concurrent searches
        self._chosen_at = 0
        self._deferred = True  # during log replay: build once at the end, not per record

    def describe(self, live: int) -> str:
        if self.in_use == "exact":
            why = {"exact": "", "auto": " (auto stays exact below 10,000)"}.get(
                self.kind, f" (below {_MIN_APPROX})"
            )
            return f"exact: {live} items{why}"
        return f"{self.in_use}: {self.reason}"

    def max_effort(self) -> int:
        return MAX_PROBES if self._lsh is not None else 1024

    # ------------------------------------------------------------------ writes (under the collection lock)

    def rebuild(self, index: ExactIndex) -> None:
        """(Re)build from the live rows, choosing afresh."""
        self._deferred = False
        rows = index.live_rows()
        st = index._state
        db = st.vectors
        n = len(rows)
        self._chosen_at = n
        self._lsh, self._hnsw = None, None
        if self.kind == "exact" or n < _MIN_APPROX or (self.kind == "auto" and n < AUTO_EXACT_BELOW):
            self.in_use, self.reason = "exact", ""
            return
        if self.kind in ("lsh", "auto"):
            tuned = tune_lsh(db, rows, self._tune_target)
            if tuned.met:
                lsh, m = tuned.index, tuned.measured
                exact_qps = exact_rate(db, rows) if self.kind == "auto" else 0.0
                if self.kind == "lsh" or m.qps >= 2 * exact_qps:
                    p = lsh.params
                    self._lsh, self.in_use = lsh, "lsh"
                    self.reason = (
                        f"bits={p.bits} tables={p.tables} probes={p.probes}: recall@10 {m.recall:.3f} at "
                        f"{m.qps:.0f} q/s on 200 sampled queries"
                        + (f", {m.qps / exact_qps:.1f}x exact" if exact_qps else "")
                    )
                    log.info("collection %s index %s: %s", self.name, self.in_use, self.reason)
                    return
            elif self.kind == "lsh":
                lsh = RandomProjectionLSH(db.shape[1], LSHParams(probes=176))
                lsh.build(db, rows)
                self._lsh, self.in_use = lsh, "lsh"
                self.reason = f"no setting reached recall {self.recall_target}: probing the most buckets"
                return
        hnsw = build_hnsw(db, rows, HNSWParams())
        ef, m = tune_hnsw_ef(hnsw, db, rows, self._tune_target)
        with self._hnsw_lock:
            self._hnsw, self._hnsw_ef, self.in_use = hnsw, ef, "hnsw"
        self.reason = f"M=16 ef={ef}: recall@10 {m.recall:.3f} at {m.qps:.0f} q/s on 200 sampled queries"
        log.info("collection %s index %s: %s", self.name, self.in_use, self.reason)

    def on_add(self, index: ExactIndex, rows: np.ndarray) -> None:
        if self._deferred:
            return
        live = len(index)
        threshold = AUTO_EXACT_BELOW if self.kind == "auto" else _MIN_APPROX
        crossed = self.in_use == "exact" and live >= threshold  # big enough for an approximate index now
        if self.kind != "exact" and (crossed or (live >= threshold and live >= 2 * max(self._chosen_at, 1))):
            self.rebuild(index)
            return
        st = index._state
        if self._lsh is not None:
            self._lsh.add(st.vectors, rows)
            if self._lsh.delta_size > max(1000, self._lsh.indexed // 4):
                self._lsh.build(st.vectors, index.live_rows())  # same settings, delta folded in
        elif self._hnsw is not None:
            with self._hnsw_lock:
                self._hnsw.add(rows, st.vectors[rows])

    def on_remove(self, rows: np.ndarray) -> None:
        # LSH needs nothing: searches skip rows whose alive flag is cleared.
        if self._hnsw is not None:
            with self._hnsw_lock:
                self._hnsw.remove(rows)

    # ------------------------------------------------------------------ reads (no collection lock)

    def search(
        self, index: ExactIndex, queries: np.ndarray, k: int, *, effort: int = 0, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        lsh, hnsw = (
            self._lsh,
            self._hnsw,
        )  # captured before the storage state (see RandomProjectionLSH.search)
        if exact or (lsh is None and hnsw is None):
            return index.search(queries, k)
        st = index._state
        if lsh is not None:
            scores, rows, _ = lsh.search(st.vectors, st.alive, queries, k, effort or None, n=st.n)
        elif hnsw is not None:
            with self._hnsw_lock:
                scores, rows = hnsw.search(queries, k, effort or self._hnsw_ef)
        return trim_unfilled(scores, rows)
