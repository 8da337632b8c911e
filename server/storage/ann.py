"""Keeps a collection's approximate index (LSH or HNSW) in step with its exact storage, and chooses it.

Policy: ``exact`` never builds one; ``lsh`` and ``hnsw`` tune their query-time effort to the collection's
recall target on a sample of its own vectors; ``auto`` stays exact below 10,000 items and above that tunes
both and takes the faster of those that meet the target (LSH is kept only when it is). The choice is
revisited whenever the collection has doubled since it was made.

Building and tuning run on a background thread (minutes for HNSW at a million items): searches keep using
the index in force, or exact search, and writers are not held up. When the build is done, the rows written
meanwhile are caught up under the collection's lock and the new index is swapped in with one assignment.

The index in force is saved with each snapshot (``ann-G.json``, plus the HNSW graph as ``hnsw-G.usearch``,
keyed by snapshot position) and restored at open, so a restart does not rebuild it. A compaction renames
the graph's keys instead of rebuilding it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kernels import ExactIndex
from kernels.hnsw import HNSWIndex, HNSWParams
from kernels.lsh import MAX_PROBES, LSHParams, RandomProjectionLSH
from kernels.rescore import rescore
from kernels.topk import trim_unfilled
from kernels.tuning import AUTO_EXACT_BELOW, build_hnsw, tune_hnsw_ef, tune_lsh
from server.storage import snapshot

log = logging.getLogger("visionsearch.index")

INDEX_KINDS = ("auto", "exact", "lsh", "hnsw")
_MIN_APPROX = 1000  # below this an approximate index is never worth its upkeep
_STATE_VERSION = 1


@dataclass(frozen=True)
class _Choice:
    """The index in force; replaced whole, never mutated, so a reader sees one consistent choice."""

    in_use: str  # "exact" | "lsh" | "hnsw"
    reason: str = ""
    lsh: RandomProjectionLSH | None = None
    hnsw: HNSWIndex | None = None
    ef: int = 64
    qps: float = 0.0  # measured while tuning


_EXACT = _Choice("exact")


def state_path(folder: Path, generation: int) -> Path:
    return folder / f"ann-{generation}.json"


def graph_path(folder: Path, generation: int) -> Path:
    return folder / f"hnsw-{generation}.usearch"


class AnnManager:
    def __init__(
        self,
        kind: str,
        recall_target: float,
        name: str,
        hnsw: HNSWParams,
        lock: threading.Lock,
    ) -> None:
        self.kind = kind
        self.recall_target = recall_target
        # Tuned on 200 sampled queries: aim a little above the target so that other queries meet it too, by
        # at most half the distance to 1 (a target of 0.994 aimed at 1.0 sent HNSW to its largest ef).
        self._tune_target = recall_target + min(0.01, (1.0 - recall_target) / 2)
        self.name = name
        self.hnsw_params = hnsw
        self._lock = lock  # the collection's writer lock
        self._choice = _EXACT
        self._chosen_at = 0
        self._deferred = True  # during log replay: decide once at the end, not per record
        self._building: threading.Thread | None = None
        self.build_progress = 1.0  # of the build in flight: 0 when it starts, 1 when none runs
        self._build_again = False
        self._retired = False
        self.build_done = threading.Event()
        self.build_done.set()

    def set_recall_target(self, recall_target: float) -> None:
        """A new target, met from the next index choice (the collection's next doubling, or its next open)."""
        self.recall_target = recall_target
        self._tune_target = recall_target + min(0.01, (1.0 - recall_target) / 2)

    @property
    def in_use(self) -> str:
        return self._choice.in_use

    def describe(self, live: int) -> str:
        choice = self._choice
        building = " (building an index in the background)" if self._building is not None else ""
        if choice.in_use == "exact":
            why = {"exact": "", "auto": " (auto stays exact below 10,000)"}.get(
                self.kind, f" (below {_MIN_APPROX})"
            )
            return f"exact: {live} items{building or why}"
        return f"{choice.in_use}: {choice.reason}{building}"

    def max_effort(self) -> int:
        return MAX_PROBES if self._choice.lsh is not None else 1024

    # ------------------------------------------------------------------ writes (under the collection lock)

    def start(self, index: ExactIndex) -> None:
        """After log replay: keep a restored index, or decide (and build in the background)."""
        restored = not self._deferred
        self._deferred = False
        if not restored:
            self._decide(index)

    def _wanted(self, live: int) -> bool:
        """Whether an approximate index should be (re)built at this size."""
        if self.kind == "exact" or live < _MIN_APPROX:
            return False
        threshold = AUTO_EXACT_BELOW if self.kind == "auto" else _MIN_APPROX
        if live < threshold:
            return False
        return self._choice.in_use == "exact" or live >= 2 * max(self._chosen_at, 1)

    def _decide(self, index: ExactIndex) -> None:
        live = len(index)
        if self._wanted(live):
            self._start_build(index)
        elif self._choice.in_use != "exact" and (live < _MIN_APPROX or self.kind == "exact"):
            self._choice = _EXACT

    def _start_build(self, index: ExactIndex) -> None:
        if self._building is not None:
            self._build_again = True
            return
        st = index._state
        rows = np.flatnonzero(st.alive[: st.n]).astype(np.int64)
        self._chosen_at = len(rows)
        self.build_progress = 0.0
        self.build_done.clear()
        self._building = threading.Thread(
            target=self._build_then_swap,
            args=(index, st.vectors, rows, st.n),
            name=f"index-build-{self.name}",
            daemon=True,
        )
        self._building.start()

    def _build_then_swap(self, index: ExactIndex, db: np.ndarray, rows: np.ndarray, n0: int) -> None:
        try:
            choice: _Choice | None = self._choose(db, rows)
        except Exception:  # a failed build leaves the index in force serving; the next doubling retries
            log.exception("collection %s: index build failed", self.name)
            choice = None
        with self._lock:
            try:
                if choice is not None and not self._retired:
                    self._catch_up(choice, index, rows, n0)
                    self._choice = choice
                    log.info("collection %s index %s: %s", self.name, choice.in_use, choice.reason)
            finally:
                # Only now: readers of describe() must never see "exact, not building" between builds.
                self._building = None
                self.build_progress = 1.0
            try:
                if self._build_again and not self._retired:
                    self._build_again = False
                    self._decide(index)
            finally:
                if self._building is None:
                    self.build_done.set()

    @staticmethod
    def _catch_up(choice: _Choice, index: ExactIndex, built: np.ndarray, n0: int) -> None:
        """Bring an index built from the rows live at ``n0`` up to the storage now."""
        st = index._state
        added = n0 + np.flatnonzero(st.alive[n0 : st.n]).astype(np.int64)
        if choice.lsh is not None and len(added):
            choice.lsh.add(st.vectors, added)
        if choice.hnsw is not None:
            choice.hnsw.add(added, st.vectors[added])
            choice.hnsw.remove(built[st.alive[built] == 0])
        # LSH needs no removals: its searches skip rows whose alive flag is cleared.

    def _choose(self, db: np.ndarray, rows: np.ndarray) -> _Choice:
        """Build and tune, off the writer's path. ``db`` rows in ``rows`` are never rewritten meanwhile."""
        lsh: _Choice | None = None
        # Progress: LSH tuning (auto) is the first fifth; adding rows to the graph most of the rest.
        graph_from = 0.0
        if self.kind in ("lsh", "auto"):
            tuned = tune_lsh(db, rows, self._tune_target)
            self.build_progress = graph_from = 0.2 if self.kind == "auto" else 1.0
            p, m = tuned.index.params, tuned.measured
            if tuned.met or self.kind == "lsh":
                index = tuned.index
                reason = (
                    f"bits={p.bits} tables={p.tables} probes={p.probes}: "
                    f"recall@10 {m.recall:.3f} at {m.qps:.0f} q/s"
                )
                if not tuned.met:
                    index = RandomProjectionLSH(db.shape[1], LSHParams(probes=MAX_PROBES))
                    index.build(db, rows)
                    reason = f"no setting reached recall {self.recall_target}: probing the most buckets"
                lsh = _Choice("lsh", reason + " on 200 sampled queries", lsh=index, qps=m.qps)
            if self.kind == "lsh":
                return lsh  # type: ignore[return-value]

        def added(share: float) -> None:
            self.build_progress = graph_from + (0.95 - graph_from) * share

        hnsw = build_hnsw(db, rows, self.hnsw_params, added)
        ef, m = tune_hnsw_ef(hnsw, db, rows, self._tune_target)
        hp = self.hnsw_params
        reason = (
            f"M={hp.connectivity} ef_construction={hp.expansion_add} ef={ef}: recall@10 {m.recall:.3f} at "
            f"{m.qps:.0f} q/s on 200 sampled queries"
        )
        graph = _Choice("hnsw", reason, hnsw=hnsw, ef=ef, qps=m.qps)
        if lsh is None:
            return graph
        # auto: the faster of the two that meet the target (tuning ends at the target or the top setting).
        met = m.recall >= self._tune_target
        faster, slower = (lsh, graph) if (lsh.qps > graph.qps or not met) else (graph, lsh)
        return replace(faster, reason=f"{faster.reason}; {slower.in_use} measured {slower.qps:.0f} q/s")

    def on_add(self, index: ExactIndex, rows: np.ndarray) -> None:
        if self._deferred:
            return
        if self._wanted(len(index)):
            self._start_build(index)
        choice = self._choice
        st = index._state
        if choice.lsh is not None:
            choice.lsh.add(st.vectors, rows)
            if choice.lsh.delta_size > max(1000, choice.lsh.indexed // 4):
                choice.lsh.build(st.vectors, index.live_rows())  # same settings, delta folded in
        elif choice.hnsw is not None:
            choice.hnsw.add(rows, st.vectors[rows])

    def on_remove(self, rows: np.ndarray) -> None:
        # LSH needs nothing: searches skip rows whose alive flag is cleared.
        hnsw = self._choice.hnsw
        if hnsw is not None:
            hnsw.remove(rows)

    def retire(self) -> None:
        """The collection is closed or dropped: a build in flight is discarded when it ends."""
        self._retired = True

    def adopt(self, old: AnnManager, live: np.ndarray, index: ExactIndex) -> None:
        """Take over ``old``'s index after a compaction that moved row ``live[i]`` to row ``i``."""
        self._deferred = False
        self._chosen_at = old._chosen_at
        old.retire()
        choice = old._choice
        if choice.hnsw is not None:
            hnsw = choice.hnsw
            with hnsw.lock:
                # Readers of the old layout that have not searched yet fall back to exact search.
                old._choice = _EXACT
                hnsw._index.rename(np.asarray(live, np.uint64), np.arange(len(live), dtype=np.uint64))
            self._choice = choice
        elif choice.lsh is not None:
            lsh = RandomProjectionLSH(index.dim, choice.lsh.params)
            lsh.build(index._state.vectors, index.live_rows())
            self._choice = _Choice("lsh", choice.reason, lsh=lsh)
        if old._building is not None or self._wanted(len(index)):
            self._start_build(index)

    # -------------------------------------------------------- persistence (under the collection lock)

    def save(self, folder: Path, generation: int) -> dict[str, dict[str, Any]]:
        """Write the index in force beside snapshot ``generation`` (whose row i is row i of the storage);
        returns the manifest entries of the files written."""
        choice = self._choice
        if choice.in_use == "exact":
            return {}
        state: dict[str, Any] = {
            "version": _STATE_VERSION,
            "kind": self.kind,
            "in_use": choice.in_use,
            "reason": choice.reason,
            "chosen_at": self._chosen_at,
            "ef": choice.ef,
        }
        files: dict[str, dict[str, Any]] = {}
        if choice.lsh is not None:
            state["lsh"] = asdict(choice.lsh.params)
        if choice.hnsw is not None:
            state["hnsw"] = asdict(choice.hnsw.params)
            path = graph_path(folder, generation)
            choice.hnsw.save(path)
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[path.name] = snapshot.file_sum(path)
        path = state_path(folder, generation)
        path.write_text(json.dumps(state))
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        files[path.name] = snapshot.file_sum(path)
        return files

    def restore(self, folder: Path, manifest: snapshot.Manifest, index: ExactIndex) -> bool:
        """Take the index saved with the snapshot of ``manifest`` if it matches this collection and its files
        pass their checksums; False to rebuild it from the vectors. An unchecked graph is never loaded: a
        damaged usearch file can crash the process."""
        generation = manifest.generation
        path = state_path(folder, generation)
        if manifest.legacy or path.name not in manifest.files:
            return False
        try:
            snapshot.verify(folder, manifest, [path.name])
            state = json.loads(path.read_text())
            if state.get("version") != _STATE_VERSION or state["kind"] != self.kind:
                return False
            reason = state["reason"].removesuffix(" (restored at open)") + " (restored at open)"
            if state["in_use"] == "hnsw":
                params = HNSWParams(**state["hnsw"])
                if params != self.hnsw_params or len(index) != index.rows:
                    return False
                snapshot.verify(folder, manifest, [graph_path(folder, generation).name])
                hnsw = HNSWIndex(index.dim, params)
                hnsw.load(graph_path(folder, generation))
                if len(hnsw) != len(index):
                    return False
                choice = _Choice("hnsw", reason, hnsw=hnsw, ef=int(state["ef"]))
            elif state["in_use"] == "lsh":
                lsh = RandomProjectionLSH(index.dim, LSHParams(**state["lsh"]))
                lsh.build(index._state.vectors, index.live_rows())
                choice = _Choice("lsh", reason, lsh=lsh)
            else:
                return False
        except snapshot.SnapshotDamaged as e:
            log.warning(
                "collection %s: saved index is damaged (%s); rebuilding it from the vectors", self.name, e
            )
            return False
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            log.warning("collection %s: saved index not usable (%s); rebuilding", self.name, e)
            return False
        self._choice = choice
        self._chosen_at = int(state["chosen_at"])
        self._deferred = False
        return True

    # ------------------------------------------------------------------ reads (no collection lock)

    def search(
        self, index: ExactIndex, queries: np.ndarray, k: int, *, effort: int = 0, exact: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        choice = self._choice  # captured before the storage state (see RandomProjectionLSH.search)
        if exact or choice.in_use == "exact":
            return index.search(queries, k)
        st = index._state
        if choice.lsh is not None:
            scores, rows, _ = choice.lsh.search(st.vectors, st.alive, queries, k, effort or None, n=st.n)
            return trim_unfilled(scores, rows)
        hnsw = choice.hnsw
        if hnsw is None:
            return index.search(queries, k)
        quantized = hnsw.params.dtype != "f32"
        with hnsw.lock:
            if self._choice is choice:
                # A quantized graph is asked for twice as many candidates, re-scored below in float32.
                scores, rows = hnsw.search_locked(queries, 2 * k if quantized else k, effort or choice.ef)
                if not quantized:
                    return trim_unfilled(scores, rows)
        if self._choice is not choice:
            return index.search(queries, k)  # the graph moved to a compacted layout meanwhile
        return trim_unfilled(*rescore(st.vectors, queries, rows, k))
