"""One collection: ids, payloads and vectors, durable through a write-ahead log and snapshots.

Writers take the collection's lock; searches take none. A search reads one immutable-by-convention view
(index, row -> id, row -> payload) captured from a single attribute, so a concurrent upsert, delete or
compaction can never pair a row number with the wrong id.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from pyroaring import BitMap
from sortedcontainers import SortedList

from embedder.naming import unknown_joint
from kernels import ExactIndex, has_nonfinite, row_norms
from kernels.hnsw import DTYPES, HNSW_CONNECTIVITY_RANGE, HNSW_DEFAULTS, HNSW_EXPANSION_ADD_RANGE, HNSWParams
from kernels.payload_index import FIELD_TYPES, Node, PayloadIndex, rows_of
from kernels.payload_index import build as build_payload_index
from kernels.topk import topk_rows
from server.errors import Error, fail, quote
from server.storage import snapshot
from server.storage.ann import INDEX_KINDS, AnnManager
from server.storage.recovery import Recovered, config_bytes, recover
from server.storage.wal import WalWriteError, WriteAheadLog

log = logging.getLogger("visionsearch.store")

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # always with fullmatch: `$` would admit a trailing newline
MAX_ID_BYTES = 256
MAX_DIM = 65536
METRICS = ("cosine", "inner_product")
BACKENDS = ("local", "milvus")
GRAPH_INDEXES = ("hnsw", "auto")  # the index settings under which an HNSW graph may be built


def default_vector_dtype(index: str, backend: str) -> str:
    """The graph type of a new collection that names none: f16 where a local HNSW graph may be built. Its
    candidates are re-scored in float32, so results keep their recall, and at half the bytes a graph walk
    misses cache half as often (60k x 784: 182 against 357 us a search at recall 0.974 either way, bench/
    latency.py's collection; 1M x 1280: p99 1.27 against 5.76 ms, README "Scaling")."""
    return "f16" if backend == "local" and index in GRAPH_INDEXES else "f32"


@dataclass(frozen=True)
class CollectionSettings:
    name: str
    dim: int
    metric: str = "cosine"
    embedder: str = ""
    # A joint image-word space kept beside the image space ("conse:spacy", "head:NAME", ...), and its width.
    joint: str = ""
    joint_dim: int = 0
    index: str = "auto"
    recall_target: float = 0.95
    # HNSW graph settings (M, ef_construction), used whenever the index is or becomes HNSW.
    hnsw_connectivity: int = HNSW_DEFAULTS.connectivity
    hnsw_expansion_add: int = HNSW_DEFAULTS.expansion_add
    # Payload fields indexed for filters: (key, type) pairs, type one of kernels.payload_index.FIELD_TYPES.
    payload_indexes: tuple[tuple[str, str], ...] = ()
    # Set at creation: tells this collection from an earlier one of the same name (scroll cursors).
    uid: str = ""
    # Where the items live: "local" (this data folder) or "milvus" (server.storage.milvus).
    backend: str = "local"
    # How the HNSW graph stores its vectors (f32, f16, i8), or "" for the default of the index in force
    # (``graph_dtype``); the exact storage stays float32. Settings saved before "" meant f16 for graphs say
    # f32 explicitly or nothing: either way f32, as they were built.
    vector_dtype: str = "f32"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CollectionSettings:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values["payload_indexes"] = tuple((str(k), str(t)) for k, t in values.get("payload_indexes", ()))
        return cls(**values)

    @property
    def indexed(self) -> dict[str, str]:
        return dict(self.payload_indexes)

    @property
    def hnsw(self) -> HNSWParams:
        return HNSWParams(self.hnsw_connectivity, self.hnsw_expansion_add, dtype=self.graph_dtype)

    @property
    def graph_dtype(self) -> str:
        """The HNSW graph's vector type: the one asked for, or the default for this index and backend, so
        an empty collection whose index changes gets the default of its new index."""
        return self.vector_dtype or default_vector_dtype(self.index, self.backend)

    def validate(self, known_embedders: dict[str, int], known_joints: dict[str, int]) -> None:
        if not NAME_RE.fullmatch(self.name):
            fail(
                Error.BAD_REQUEST,
                f"collection name {quote(self.name)} must be 1-64 characters of [A-Za-z0-9_-]",
            )
        if self.index not in INDEX_KINDS:
            fail(Error.BAD_REQUEST, f"index {quote(self.index)} is not one of {', '.join(INDEX_KINDS)}")
        if not 0 < self.recall_target <= 1:
            fail(Error.BAD_REQUEST, f"recall_target must be in (0, 1], got {self.recall_target}")
        lo, hi = HNSW_CONNECTIVITY_RANGE
        if not lo <= self.hnsw_connectivity <= hi:
            fail(
                Error.BAD_REQUEST,
                f"hnsw connectivity (M) must be in {lo}..{hi}, got {self.hnsw_connectivity}",
            )
        lo, hi = HNSW_EXPANSION_ADD_RANGE
        if not lo <= self.hnsw_expansion_add <= hi:
            fail(
                Error.BAD_REQUEST,
                f"hnsw expansion_add (ef_construction) must be in {lo}..{hi}, got {self.hnsw_expansion_add}",
            )
        if len(self.payload_indexes) > 64:
            fail(Error.BAD_REQUEST, f"{len(self.payload_indexes)} payload indexes: at most 64")
        seen = set()
        for key, kind in self.payload_indexes:
            if not 1 <= len(key) <= 64 or key in seen:
                fail(Error.BAD_REQUEST, f"payload index key {quote(key, 40)} must be 1-64 characters, once")
            if kind not in FIELD_TYPES:
                fail(
                    Error.BAD_REQUEST,
                    f"payload index {quote(key, 40)}: type {quote(kind)} is not {FIELD_TYPES}",
                )
            seen.add(key)
        if self.vector_dtype and self.vector_dtype not in DTYPES:
            fail(
                Error.BAD_REQUEST,
                f"vector_dtype {quote(self.vector_dtype)} is not one HNSW supports: {', '.join(DTYPES)}",
            )
        if self.vector_dtype == "i8" and self.metric != "cosine":
            fail(
                Error.BAD_REQUEST,
                "vector_dtype i8 needs metric cosine (its graph compares by cosine): use f16",
            )
        if self.vector_dtype not in ("", "f32") and self.index not in GRAPH_INDEXES:
            fail(
                Error.BAD_REQUEST,
                f"vector_dtype {self.vector_dtype} applies to the HNSW graph: use index hnsw or auto "
                f"(index {self.index} searches float32 vectors)",
            )
        if self.backend not in BACKENDS:
            fail(Error.BAD_REQUEST, f"backend {quote(self.backend)} is not one of {', '.join(BACKENDS)}")
        if self.metric not in METRICS:
            fail(Error.BAD_REQUEST, f"metric {quote(self.metric)} is not one of {', '.join(METRICS)}")
        if self.embedder and self.embedder not in known_embedders:
            fail(
                Error.BAD_REQUEST,
                f"embedder {quote(self.embedder)} is unknown; "
                f"use one of {sorted(known_embedders)} or leave it empty",
            )
        if not 1 <= self.dim <= MAX_DIM:
            fail(Error.BAD_REQUEST, f"dim must be between 1 and {MAX_DIM}, got {self.dim}")
        if self.joint:
            if self.joint not in known_joints:
                fail(Error.BAD_REQUEST, unknown_joint(self.joint, known_joints))
            if not self.embedder:
                fail(Error.BAD_REQUEST, "a joint space maps image features: set an embedder too")
            if self.joint_dim != known_joints[self.joint]:
                fail(Error.INTERNAL, f"joint_dim {self.joint_dim} != {known_joints[self.joint]}")
        if self.embedder and known_embedders[self.embedder] != self.dim:
            fail(
                Error.BAD_REQUEST,
                f"embedder {self.embedder!r} makes {known_embedders[self.embedder]}-d vectors but dim is "
                f"{self.dim}: set dim to {known_embedders[self.embedder]} (or 0 to take the embedder's)",
            )


# A filtered search scans the passing items exactly while that costs at most this many multiply-adds
# (about a millisecond on one core); above, it asks the approximate index for more candidates than k.
EXACT_FILTER_BUDGET = 4_000_000
SCROLL_SCAN = 100_000
MAX_OVERFETCH = 4096


def plan_filtered(passing: int, live: int, dim: int, k: int, *, approximate: bool) -> str:
    """ "exact" (scan the passing rows) or "ann" (widen the approximate index's candidates)."""
    if not approximate or passing * dim <= EXACT_FILTER_BUDGET or passing <= 4 * k:
        return "exact"
    return "ann"


def describe_planning(live: int, dim: int, in_use: str) -> str:
    cutoff = EXACT_FILTER_BUDGET // max(dim, 1)
    if in_use == "exact":
        return f"exact index: a filtered search scans exactly the items that pass (of {live:,})"
    return (
        f"up to {cutoff:,} passing items: an exact scan of them; more: {in_use} asked for about "
        f"k / (share passing) x 1.5 candidates, widened x4 until k pass, up to {MAX_OVERFETCH:,}, "
        "then an exact scan"
    )


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, str]
    row: int


@dataclass(frozen=True)
class _View:
    index: ExactIndex
    joint: ExactIndex | None  # same rows as ``index``
    ann: AnnManager  # approximate search over ``index``'s rows
    row_ids: list[str]  # append-only; a cleared row keeps its old id
    payloads: list[dict[str, Any]]  # a row's payload is replaced whole, never changed in place
    filters: PayloadIndex  # the indexed payload fields of the live rows
    sorted_ids: SortedList  # the live ids in order, for Scroll


def validate_id(item_id: str, where: str = "") -> None:
    if not item_id or len(item_id.encode("utf8")) > MAX_ID_BYTES:
        at = f"{where}: " if where else ""
        fail(Error.BAD_REQUEST, f"{at}item id {quote(item_id, 40)} must be 1-{MAX_ID_BYTES} bytes of UTF-8")


def fits(value: Any, kind: str) -> bool:
    """Whether a payload value (or every element of a list) has a field type."""
    values = value if isinstance(value, list) else [value]
    if kind == "keyword":
        return all(isinstance(x, str) for x in values)
    if kind == "integer":
        return all(isinstance(x, int) and not isinstance(x, bool) for x in values)
    if kind == "float":
        return all(isinstance(x, int | float) and not isinstance(x, bool) for x in values)
    return isinstance(value, bool)


def payload_bytes(payload: dict[str, Any]) -> int:
    return sum(len(k) + len(str(v)) + 4 for k, v in payload.items())


class SnapshotFailed(Exception):
    """A snapshot could not be written; the generation in force and its log are untouched."""


class VectorSpaces:
    """Checks that bring query and item vectors to a collection's stored form; every storage backend shares
    them (``settings`` and ``name`` are the collection's)."""

    settings: CollectionSettings

    @property
    def name(self) -> str:
        return self.settings.name

    def prepare_vectors(self, vectors: np.ndarray, what: str = "vector") -> np.ndarray:
        """Check a (m, dim) batch and bring it to the stored form (unit rows for cosine)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.settings.dim:
            got = vectors.shape[-1] if vectors.ndim else 0
            fail(
                Error.BAD_REQUEST,
                f"{what} has dimension {got} but collection {self.name!r} has dimension {self.settings.dim}",
            )
        where = "" if len(vectors) == 1 else " (row {})"
        if has_nonfinite(vectors):
            row = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
            fail(Error.BAD_REQUEST, f"{what}{where.format(row)} contains NaN or Inf")
        if self.settings.metric == "cosine":
            norms = row_norms(vectors)
            if np.any(norms == 0):
                row = int(np.flatnonzero(norms == 0)[0])
                fail(
                    Error.BAD_REQUEST,
                    f"{what}{where.format(row)} is all zeros: cosine similarity needs a non-zero vector",
                )
            vectors = vectors / norms[:, None]
        return vectors

    def prepare_joint(self, vectors: np.ndarray, what: str = "joint vector") -> np.ndarray:
        """Joint-space vectors are always compared by cosine: unit rows (a zero row stays zero)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.settings.joint_dim:
            fail(Error.BAD_REQUEST, f"joint vectors must have dimension {self.settings.joint_dim}")
        if has_nonfinite(vectors):
            fail(Error.BAD_REQUEST, f"{what} contains NaN or Inf")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


class Collection(VectorSpaces):
    def __init__(
        self,
        folder: Path,
        settings: CollectionSettings,
        recovered: Recovered,
        *,
        fsync: bool,
        snapshot_wal_bytes: int,
    ):
        self.folder = folder
        self.settings = settings
        self._snapshot_wal_bytes = snapshot_wal_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._closed = ""  # why writes are refused once the collection is closed
        self._snapshot_retry_at = 0  # log size below which a failed snapshot is not tried again
        self.notes = recovered.notes
        self.last_snapshot_time = time.time()
        data = recovered.data
        self._rows: dict[str, int] = {}
        self._changes = 0  # records applied since opening: the version of the collection's items
        self._view = self._build_view(data.ids, data.payloads, data.vectors, data.joint)
        if recovered.manifest.generation:
            self._view.ann.restore(folder, recovered.manifest, self._view.index)
        for _, record in recovered.records:
            self._apply(record)
        self._view.ann.start(self._view.index)
        self._generation = recovered.top
        # After a fallback the generation loaded is the sound one: keep it (and its logs) until a fresh
        # snapshot has been written and superseded in turn; move the damaged ones aside.
        self._keep_from: int | None = recovered.manifest.generation if recovered.damaged else None
        if recovered.damaged:
            moved = snapshot.quarantine(folder, recovered.damaged)
            log.warning("collection %s: damaged snapshot files moved to %s", self.name, moved)
        path = snapshot.wal_path(folder, recovered.top)
        self._wal = WriteAheadLog(path, next_seq=recovered.next_seq, end=recovered.end, fsync=fsync)
        for note in recovered.notes:
            log.warning("collection %s: %s", self.name, note)
        if recovered.needs_snapshot:
            try:
                self._snapshot_locked()
            except SnapshotFailed as e:
                log.warning(
                    "collection %s: could not write a fresh snapshot after recovery: %s", self.name, e
                )

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, folder: Path, settings: CollectionSettings, **kw: Any) -> Collection:
        """Create the folder atomically: it appears under its name complete, or not at all."""
        tmp = folder.with_name(f".creating-{folder.name}")
        if tmp.exists():
            for p in tmp.iterdir():
                p.unlink()
            tmp.rmdir()
        tmp.mkdir(parents=True)
        snapshot.write_atomic(tmp / "config.json", config_bytes(asdict(settings)))
        # Generation 0's manifest holds no files, only a copy of the settings should config.json be lost.
        snapshot.commit(tmp, snapshot.Manifest(0, 0, 0, asdict(settings)))
        tmp.rename(folder)
        snapshot.fsync_dir(folder.parent)
        return cls.open(folder, **kw)

    @classmethod
    def open(cls, folder: Path, **kw: Any) -> Collection:
        """Open a collection folder; raises ``CollectionDamaged`` when that would lose data."""
        recovered = recover(folder, folder.name)
        settings = CollectionSettings.from_dict(recovered.settings)
        if any("config.json" in n for n in recovered.notes):
            snapshot.write_atomic(folder / "config.json", config_bytes(asdict(settings)))
        return cls(folder, settings, recovered, **kw)

    def close(self, reason: str = "closed", *, flush: bool = True) -> None:
        """Snapshot (if anything changed and ``flush``) and close; later writes through this object are
        refused with a status that says why (``reason``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = reason
            if flush and self._wal.size and not self._wal.broken:
                try:
                    self._snapshot_locked()
                except SnapshotFailed as e:
                    # The log holds every acknowledged write; the next open replays it.
                    log.warning("collection %s: no snapshot at close (%s); the log is kept", self.name, e)
            self._wal.close()
            self._view.ann.retire()

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait until no index build is in flight (for tools and tests); False on timeout."""
        return self._view.ann.build_done.wait(timeout)

    def snapshot(self) -> None:
        with self._lock:
            self._check_open()
            self._snapshot_locked()

    @property
    def wal_bytes(self) -> int:
        return self._wal.size

    # ------------------------------------------------------------------ reads

    def __len__(self) -> int:
        return len(self._view.index)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    @property
    def rows(self) -> int:
        """Rows an exact scan reads (live and cleared)."""
        return self._view.index.rows

    def index_kind(self) -> str:
        """The index answering image-space searches now: exact, lsh or hnsw."""
        return self._view.ann.in_use

    def index_build_progress(self) -> float | None:
        """Share (0..1) of the background index build in flight, None when none runs."""
        ann = self._view.ann
        return None if ann.build_done.is_set() else ann.build_progress

    def inline_ok(self) -> bool:
        """Whether its searches may run on the event loop (memory only; see ``Services.cheap_search``)."""
        return True

    def approximate(self) -> bool:
        """Whether an approximate index answers image-space searches now."""
        return self._view.ann.in_use != "exact"

    def index_in_use(self) -> str:
        view = self._view
        return view.ann.describe(len(view.index))

    def max_effort(self) -> int:
        """Effort beyond which the index in use cannot do more (LSH has 176 probe sets)."""
        return self._view.ann.max_effort()

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        joint: bool = False,
        effort: int = 0,
        exact: bool = False,
        filter: Node | None = None,
        notes: list[str] | None = None,
    ) -> list[list[Hit]]:
        """Best k items per query, in the image space or (``joint=True``) the joint space, among the items
        that pass ``filter`` when given. ``queries`` are prepared by ``prepare_vectors`` or
        ``prepare_joint``. The plan a filtered search ran is added to ``notes``."""
        allowed = self.filter_rows(filter) if filter is not None else None
        view = self._view
        index = view.index
        if joint:
            if view.joint is None:
                fail(
                    Error.PRECONDITION,
                    f"collection {self.name!r} has no joint image-word space: create it with `joint` set "
                    "(e.g. conse:spacy) to search it with words",
                )
            index = view.joint
        if allowed is not None:
            approximate = not joint and not exact and view.ann.in_use != "exact"
            plan = plan_filtered(len(allowed), len(index), index.dim, k, approximate=approximate)
            scores, rows, note = self._search_filtered(view, index, queries, k, allowed, plan, effort)
            if notes is not None:
                notes.append(note)
        elif joint:
            scores, rows = index.search(queries, k)
        else:
            scores, rows = view.ann.search(index, queries, k, effort=effort, exact=exact)
        ids, payloads = view.row_ids, view.payloads
        # Python floats and ints once per array (tolist), not a numpy scalar per hit: ~8 us of a search.
        return [
            [Hit(ids[r], s, payloads[r], r) for s, r in zip(qs, qr, strict=True)]
            for qs, qr in zip(np.asarray(scores).tolist(), np.asarray(rows).tolist(), strict=True)
        ]

    def text_version(self) -> int:
        """Changes whenever an item is added, replaced or deleted (caches of payload text compare it)."""
        return self._changes

    def live_items(self) -> tuple[int, list[str], list[dict[str, Any]]]:
        """``text_version()`` with the ids and payloads of the items in the collection at that version."""
        with self._lock:
            view = self._view
            live = view.index.live_rows()
            return self._changes, [view.row_ids[r] for r in live], [view.payloads[r] for r in live]

    def scroll(
        self, after: str | None, limit: int, filter: Node | None, with_vectors: bool
    ) -> tuple[list[tuple[str, dict[str, Any], np.ndarray | None]], str | None]:
        """Up to ``limit`` items after id ``after`` in id order (passing ``filter``), and the id to continue
        after (None at the end). With a filter that passes few items a page may hold fewer than ``limit``:
        at most ``SCROLL_SCAN`` ids are looked at per page, so a page never holds writers up for long."""
        allowed = self.filter_rows(filter) if filter is not None else None
        picked: list[tuple[str, int]] = []
        last: str | None = None
        with self._lock:
            view = self._view
            ids = view.sorted_ids
            start = ids.bisect_right(after) if after is not None else 0
            stop = min(len(ids), start + SCROLL_SCAN)
            for item_id in ids.islice(start, stop):
                last = item_id
                row = self._rows[item_id]
                if allowed is None or row in allowed:
                    picked.append((item_id, row))
                    if len(picked) == limit:
                        break
            done = last is None or (len(picked) < limit and stop == len(ids)) or ids[-1] == last
        out = [(i, view.payloads[r], view.index.vector(r) if with_vectors else None) for i, r in picked]
        return out, None if done else last

    def filter_rows(self, node: Node) -> BitMap:
        """The live rows that pass a filter (``server.filters.compile_filter``)."""
        return self._view.filters.evaluate(node, self.rows_for_ids)

    def count(self, filter: Node | None = None) -> int:
        return len(self) if filter is None else len(self.filter_rows(filter))

    def hit_vector(self, hit: Hit, *, joint: bool = False) -> np.ndarray:
        """The stored vector of a hit of this collection's search (of the space searched)."""
        return self.vector_of(hit.id, joint=True) if joint else self._view.index.vector(hit.row)

    def rows_for_ids(self, ids: list[str]) -> tuple[int, ...]:
        rows = self._rows
        return tuple(r for i in ids if (r := rows.get(i)) is not None)

    def filter_planning(self) -> str:
        view = self._view
        return describe_planning(len(view.index), self.settings.dim, view.ann.in_use)

    def _search_filtered(
        self,
        view: _View,
        index: ExactIndex,
        queries: np.ndarray,
        k: int,
        allowed: BitMap,
        plan: str,
        effort: int,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        passing, live = len(allowed), len(index)
        share = f"{passing:,} of {live:,} items pass the filter ({passing / max(live, 1):.1%})"
        if passing == 0:
            m = len(queries)
            return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64), f"{share}: no hits"
        st = index._state  # captured after the filter: every row it names exists here
        if plan == "exact":
            scores, rows = topk_rows(st.vectors, rows_of(allowed), queries, k)
            return scores, rows, f"{share}: exact scan of those"
        # The approximate index, asked for more candidates than k (about k / share, widened x4 until k pass).
        want = min(passing, k)
        depth = min(MAX_OVERFETCH, max(4 * k, int(k * live / passing * 1.5) + 16))
        out_s = np.full((len(queries), want), -np.inf, np.float32)
        out_r = np.full((len(queries), want), -1, np.int64)
        todo = np.arange(len(queries))
        tried = []
        while len(todo):
            tried.append(depth)
            # HNSW searches with ef >= depth on its own; LSH keeps its tuned probes and re-ranks more rows.
            scores, rows = view.ann.search(index, queries[todo], depth, effort=effort)
            still = []
            for j, (qs, qr) in enumerate(zip(scores, rows, strict=True)):
                keep = [(s, r) for s, r in zip(qs, qr, strict=True) if r >= 0 and int(r) in allowed][:want]
                if len(keep) == want:
                    out_s[todo[j]] = [s for s, _ in keep]
                    out_r[todo[j]] = [r for _, r in keep]
                else:
                    still.append(todo[j])
            todo = np.asarray(still, np.int64)
            if len(todo) and depth >= MAX_OVERFETCH:
                scores, rows = topk_rows(st.vectors, rows_of(allowed), queries[todo], k)
                out_s[todo], out_r[todo] = scores[:, :want], rows[:, :want]
                widened = " -> ".join(map(str, tried))
                return out_s, out_r, f"{share}: {view.ann.in_use} candidates {widened}, then an exact scan"
            depth = min(MAX_OVERFETCH, depth * 4)
        return out_s, out_r, f"{share}: {view.ann.in_use} with {' -> '.join(map(str, tried))} candidates"

    def vector_of_row(self, row: int) -> np.ndarray:
        return self._view.index.vector(row)

    def measure(self, ids: list[str]) -> tuple[int, int]:
        """How many of ``ids`` are present, and the bytes of their payloads (to size a response first)."""
        with self._lock:
            view = self._view
            rows = [self._rows[i] for i in ids if i in self._rows]
            return len(rows), sum(payload_bytes(view.payloads[r]) for r in rows)

    def get(
        self, ids: list[str], *, with_vectors: bool = True
    ) -> list[tuple[str, dict[str, str], np.ndarray | None]]:
        with self._lock:
            view = self._view
            return [
                (i, view.payloads[row], view.index.vector(row) if with_vectors else None)
                for i in ids
                if (row := self._rows.get(i)) is not None
            ]

    def vector_of(self, item_id: str, *, joint: bool = False) -> np.ndarray:
        with self._lock:
            row = self._rows.get(item_id)
            if row is None:
                fail(Error.NOT_FOUND, f"item {quote(item_id)} is not in collection {self.name!r}")
            view = self._view
            if joint:
                if view.joint is None:
                    fail(Error.PRECONDITION, f"collection {self.name!r} has no joint image-word space")
                return view.joint.vector(row)
            return view.index.vector(row)

    # ------------------------------------------------------------------ writes

    def upsert(
        self,
        ids: list[str],
        vectors: np.ndarray,
        payloads: list[dict[str, str]],
        joint: np.ndarray | None = None,
    ) -> int:
        """Insert or replace items; durable when it returns. ``vectors`` come from ``prepare_vectors`` and,
        for a collection with a joint space, ``joint`` from ``prepare_joint``."""
        if (joint is None) != (not self.settings.joint):
            raise ValueError("joint vectors are required exactly when the collection has a joint space")
        for i in ids:
            validate_id(i)
        # Within one request the last occurrence of an id wins, as if the items were sent one by one.
        last = {item_id: n for n, item_id in enumerate(ids)}
        keep = sorted(last.values())
        ids = [ids[n] for n in keep]
        vectors = np.ascontiguousarray(vectors[keep])
        payloads = [dict(payloads[n]) for n in keep]
        with self._lock:
            self._check_open()
            record = {"op": "upsert", "ids": ids, "vectors": vectors.tobytes(), "payloads": payloads}
            if joint is not None:
                record["joint"] = np.ascontiguousarray(joint[keep], dtype=np.float32).tobytes()
            self._append(record)
            self._apply(record)
            self._maybe_snapshot()
        return len(ids)

    def delete(self, ids: list[str]) -> int:
        with self._lock:
            self._check_open()
            present = [i for i in dict.fromkeys(ids) if i in self._rows]
            if not present:
                return 0
            record = {"op": "delete", "ids": present}
            self._append(record)
            self._apply(record)
            self._maybe_snapshot()
            return len(present)

    def delete_where(self, node: Node) -> int:
        """Delete every item that passes a filter, as one logged record."""
        with self._lock:
            self._check_open()
            view = self._view
            ids = [view.row_ids[r] for r in rows_of(view.filters.evaluate(node, self.rows_for_ids))]
        return self.delete(ids) if ids else 0

    def set_payload(self, ids: list[str], changes: dict[str, Any]) -> int:
        """Set payload keys of stored items (others stay); durable when it returns."""
        return self._change_payloads({"op": "set_payload", "payload": changes}, ids)

    def delete_payload_keys(self, ids: list[str], keys: list[str]) -> int:
        return self._change_payloads({"op": "delete_payload_keys", "keys": keys}, ids)

    def _change_payloads(self, record: dict[str, Any], ids: list[str]) -> int:
        with self._lock:
            self._check_open()
            present = [i for i in dict.fromkeys(ids) if i in self._rows]
            if not present:
                return 0
            record["ids"] = present
            self._append(record)
            self._apply(record)
            self._maybe_snapshot()
            return len(present)

    def reconfigure(self, settings: CollectionSettings) -> None:
        """Settings that change in place: the recall target (used from the next index choice) and the payload
        indexes (built from the stored payloads). Refused when a stored value does not fit a new index."""
        with self._lock:
            self._check_open()
            view = self._view
            added = {k: t for k, t in settings.payload_indexes if self.settings.indexed.get(k) != t}
            for row in view.index.live_rows():
                payload = view.payloads[row]
                for key, kind in added.items():
                    if key in payload and not fits(payload[key], kind):
                        fail(
                            Error.PRECONDITION,
                            f"payload key {quote(key, 40)} of item {quote(view.row_ids[row], 40)} holds "
                            f"{quote(payload[key], 40)}, not a {kind}: fix or delete such items, "
                            "or index the key with another type",
                        )
            snapshot.write_atomic(self.folder / "config.json", config_bytes(asdict(settings)))
            self.settings = settings
            live = view.index.live_rows()
            self._view = replace(
                view,
                filters=build_payload_index(settings.indexed, ((int(r), view.payloads[r]) for r in live)),
            )
            view.ann.set_recall_target(settings.recall_target)

    # ------------------------------------------------------------------ internals

    def _build_view(
        self, ids: list[str], payloads: list[dict[str, str]], vectors: np.ndarray, joint: np.ndarray | None
    ) -> _View:
        capacity = max(1024, 2 * len(ids))
        index = ExactIndex(self.settings.dim, capacity=capacity)
        joint_index = ExactIndex(self.settings.joint_dim, capacity=capacity) if self.settings.joint else None
        if len(ids):
            index.add(vectors)
            if joint_index is not None and joint is not None:
                joint_index.add(joint)
        self._rows = {item_id: n for n, item_id in enumerate(ids)}
        st = self.settings
        ann = AnnManager(st.index, st.recall_target, st.name, st.hnsw, self._lock)
        filters = build_payload_index(st.indexed, enumerate(payloads))
        return _View(index, joint_index, ann, list(ids), list(payloads), filters, SortedList(ids))

    def _apply(self, record: dict[str, Any]) -> None:
        self._changes += 1
        view = self._view
        if record["op"] == "upsert":
            ids = record["ids"]
            vectors = np.frombuffer(record["vectors"], dtype=np.float32).reshape(len(ids), self.settings.dim)
            replaced = [self._rows[i] for i in ids if i in self._rows]
            # Payloads and ids first, then the rows: a reader that sees a new row can always name it.
            view.row_ids.extend(ids)
            view.payloads.extend(record["payloads"])
            if view.joint is not None:
                joint = np.frombuffer(record["joint"], dtype=np.float32).reshape(
                    len(ids), self.settings.joint_dim
                )
                view.joint.add(joint)
            rows = view.index.add(vectors)
            if replaced:
                self._remove_rows(view, replaced)
            for item_id, row, payload in zip(ids, rows, record["payloads"], strict=True):
                if item_id not in self._rows:
                    view.sorted_ids.add(item_id)
                self._rows[item_id] = int(row)
                # After the vector rows exist: a filter never names a row a search cannot read.
                view.filters.add(int(row), payload)
            view.ann.on_add(view.index, rows)
        elif record["op"] == "delete":
            gone = [self._rows.pop(i) for i in record["ids"] if i in self._rows]
            for i in record["ids"]:
                view.sorted_ids.discard(i)
            if gone:
                self._remove_rows(view, gone)
        elif record["op"] in ("set_payload", "delete_payload_keys"):
            changes, drop = record.get("payload", {}), set(record.get("keys", ()))
            for i in record["ids"]:
                row = self._rows.get(i)
                if row is None:
                    continue
                old = view.payloads[row]
                new = {k: v for k, v in old.items() if k not in drop} | changes
                view.payloads[row] = new  # replaced whole: a reader sees the old payload or the new one
                view.filters.replace(row, old, new)
        else:
            raise ValueError(f"unknown log record {record['op']!r}")

    @staticmethod
    def _remove_rows(view: _View, rows: list[int]) -> None:
        for row in rows:
            view.filters.remove(row, view.payloads[row])
        arr = np.array(rows, dtype=np.int64)
        view.index.remove(arr)
        view.ann.on_remove(arr)
        if view.joint is not None:
            view.joint.remove(arr)

    def _append(self, record: dict[str, Any]) -> None:
        try:
            self._wal.append(record)
        except WalWriteError as e:
            log.error("collection %s: %s (write refused)", self.name, e)
            if e.disk_full:
                fail(
                    Error.DISK_FULL,
                    f"collection {self.name!r}: the disk is full; the write was not applied: "
                    "free space in the data folder and retry",
                )
            fail(
                Error.UNAVAILABLE,
                f"collection {self.name!r}: {e}; the write was not applied: retry later",
            )

    def _check_open(self) -> None:
        if self._closed == "dropped":
            fail(Error.NOT_FOUND, f"collection {self.name!r} was dropped while this call waited")
        if self._closed:
            fail(
                Error.ABORTED, f"collection {self.name!r} was {self._closed} while this call waited: retry it"
            )

    def _maybe_snapshot(self) -> None:
        size = self._wal.size
        if size > self._snapshot_wal_bytes and size >= self._snapshot_retry_at:
            try:
                self._snapshot_locked()
            except SnapshotFailed as e:
                # The write that brought us here is durable in the log: it still succeeds. Try again once the
                # log has grown by another quarter of the threshold.
                self._snapshot_retry_at = size + self._snapshot_wal_bytes // 4
                log.warning("collection %s: snapshot failed (%s); writes go on into the log", self.name, e)

    def _snapshot_locked(self) -> None:
        """Write generation g+1 and put it in force; on failure generation g and its log stay in force."""
        view = self._view
        live = view.index.live_rows()
        ids = [view.row_ids[r] for r in live]
        payloads = [view.payloads[r] for r in live]
        vectors = np.ascontiguousarray(view.index.vectors(live))
        joint = np.ascontiguousarray(view.joint.vectors(live)) if view.joint is not None else None
        # The snapshot holds live rows only; serving from the same compact layout drops cleared rows, and the
        # saved graph must be keyed by snapshot rows. With none cleared the rows are already compact.
        if len(live) < view.index.rows:
            compact = self._build_view(ids, payloads, vectors, joint)
            compact.ann.adopt(view.ann, live, compact.index)
            self._view = compact
        generation = self._generation + 1
        new_wal: WriteAheadLog | None = None
        try:
            files = snapshot.write_data(
                self.folder, generation, snapshot.SnapshotData(ids, payloads, vectors, joint)
            )
            files |= self._view.ann.save(self.folder, generation)
            new_wal = WriteAheadLog(
                snapshot.wal_path(self.folder, generation),
                next_seq=self._wal.next_seq,
                end=None,
                fsync=self._fsync,
            )
            manifest = snapshot.Manifest(
                generation, self._wal.next_seq - 1, len(ids), asdict(self.settings), files
            )
            snapshot.commit(self.folder, manifest)
        except Exception as e:
            if new_wal is not None:
                new_wal.close()
            try:
                snapshot.wal_path(self.folder, generation).unlink(missing_ok=True)
                snapshot.remove_generation_files(self.folder, generation)
            except OSError:
                pass  # left for the next snapshot of this generation to overwrite
            raise SnapshotFailed(f"{type(e).__name__}: {str(e)[:200]}") from e
        old, self._wal, self._generation = self._wal, new_wal, generation
        self._snapshot_retry_at = 0
        self.last_snapshot_time = time.time()
        try:
            old.close()
            # Keep the previous generation and its log: they replace this one if it is found damaged.
            keep = generation - 1 if self._keep_from is None else self._keep_from
            self._keep_from = None
            snapshot.remove_older_than(self.folder, keep)
        except OSError as e:
            log.warning("collection %s: could not tidy older generations: %s", self.name, e)
