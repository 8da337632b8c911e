"""One collection: ids, payloads and vectors, durable through a write-ahead log and snapshots.

Writers take the collection's lock; searches take none. A search reads one immutable-by-convention view
(index, row -> id, row -> payload) captured from a single attribute, so a concurrent upsert, delete or
compaction can never pair a row number with the wrong id.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernels import ExactIndex, has_nonfinite, row_norms
from kernels.hnsw import HNSW_CONNECTIVITY_RANGE, HNSW_DEFAULTS, HNSW_EXPANSION_ADD_RANGE, HNSWParams
from server.errors import Error, fail
from server.storage import snapshot
from server.storage.ann import INDEX_KINDS, AnnManager
from server.storage.wal import WriteAheadLog

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_ID_BYTES = 256
MAX_DIM = 65536
METRICS = ("cosine", "inner_product")


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

    @property
    def hnsw(self) -> HNSWParams:
        return HNSWParams(self.hnsw_connectivity, self.hnsw_expansion_add)

    def validate(self, known_embedders: dict[str, int], known_joints: dict[str, int]) -> None:
        if not NAME_RE.match(self.name):
            fail(Error.BAD_REQUEST, f"collection name {self.name!r} must be 1-64 characters of [A-Za-z0-9_-]")
        if self.index not in INDEX_KINDS:
            fail(Error.BAD_REQUEST, f"index {self.index!r} is not one of {', '.join(INDEX_KINDS)}")
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
        if self.metric not in METRICS:
            fail(Error.BAD_REQUEST, f"metric {self.metric!r} is not one of {', '.join(METRICS)}")
        if self.embedder and self.embedder not in known_embedders:
            fail(
                Error.BAD_REQUEST,
                f"embedder {self.embedder!r} is unknown; "
                f"use one of {sorted(known_embedders)} or leave it empty",
            )
        if not 1 <= self.dim <= MAX_DIM:
            fail(Error.BAD_REQUEST, f"dim must be between 1 and {MAX_DIM}, got {self.dim}")
        if self.joint:
            if self.joint not in known_joints:
                fail(
                    Error.BAD_REQUEST,
                    f"joint space {self.joint!r} is unknown; "
                    f"use one of {sorted(known_joints)} or leave it empty",
                )
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
    payloads: list[dict[str, str]]


def validate_id(item_id: str) -> None:
    if not item_id or len(item_id.encode("utf8")) > MAX_ID_BYTES:
        fail(Error.BAD_REQUEST, f"item id {item_id[:40]!r} must be 1-{MAX_ID_BYTES} bytes of UTF-8")


class Collection:
    def __init__(self, folder: Path, settings: CollectionSettings, *, fsync: bool, snapshot_wal_bytes: int):
        self.folder = folder
        self.settings = settings
        self._snapshot_wal_bytes = snapshot_wal_bytes
        self._fsync = fsync
        self._lock = threading.Lock()
        self._generation = snapshot.current_generation(folder)
        data = snapshot.load(folder, self._generation, settings.dim, settings.joint_dim)
        self._rows: dict[str, int] = {}
        self._changes = 0  # records applied since opening: the version of the collection's items
        self._view = self._build_view(data.ids, data.payloads, data.vectors, data.joint)
        self._view.ann.restore(folder, self._generation, self._view.index)
        for record in WriteAheadLog.replay(snapshot.wal_path(folder, self._generation)):
            self._apply(record)
        self._view.ann.start(self._view.index)
        self._wal = WriteAheadLog(snapshot.wal_path(folder, self._generation), fsync=fsync)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(cls, folder: Path, settings: CollectionSettings, **kw: Any) -> Collection:
        folder.mkdir(parents=True)
        snapshot.write_atomic(folder / "config.json", json.dumps(asdict(settings)).encode())
        return cls(folder, settings, **kw)

    @classmethod
    def open(cls, folder: Path, **kw: Any) -> Collection:
        settings = CollectionSettings(**json.loads((folder / "config.json").read_text()))
        return cls(folder, settings, **kw)

    def close(self) -> None:
        with self._lock:
            if self._wal.size:
                self._snapshot_locked()
            self._wal.close()
            self._view.ann.retire()

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait until no index build is in flight (for tools and tests); False on timeout."""
        return self._view.ann.build_done.wait(timeout)

    def snapshot(self) -> None:
        with self._lock:
            self._snapshot_locked()

    # ------------------------------------------------------------------ reads

    @property
    def name(self) -> str:
        return self.settings.name

    def __len__(self) -> int:
        return len(self._view.index)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._rows

    def index_in_use(self) -> str:
        view = self._view
        return view.ann.describe(len(view.index))

    def max_effort(self) -> int:
        """Effort beyond which the index in use cannot do more (LSH has 176 probe sets)."""
        return self._view.ann.max_effort()

    def search(
        self, queries: np.ndarray, k: int, *, joint: bool = False, effort: int = 0, exact: bool = False
    ) -> list[list[Hit]]:
        """Best k items per query, in the image space or (``joint=True``) the joint space. ``queries`` are
        prepared by ``prepare_vectors`` or ``prepare_joint``."""
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
            scores, rows = index.search(queries, k)
        else:
            scores, rows = view.ann.search(index, queries, k, effort=effort, exact=exact)
        return [
            [Hit(view.row_ids[r], float(s), view.payloads[r], int(r)) for s, r in zip(qs, qr, strict=True)]
            for qs, qr in zip(scores, rows, strict=True)
        ]

    def text_version(self) -> int:
        """Changes whenever an item is added, replaced or deleted (caches of payload text compare it)."""
        return self._changes

    def live_items(self) -> tuple[int, list[str], list[dict[str, str]]]:
        """``text_version()`` with the ids and payloads of the items in the collection at that version."""
        with self._lock:
            view = self._view
            live = view.index.live_rows()
            return self._changes, [view.row_ids[r] for r in live], [view.payloads[r] for r in live]

    def vector_of_row(self, row: int) -> np.ndarray:
        return self._view.index.vector(row)

    def get(self, ids: list[str]) -> list[tuple[str, dict[str, str], np.ndarray]]:
        with self._lock:
            view = self._view
            return [
                (i, view.payloads[self._rows[i]], view.index.vector(self._rows[i]))
                for i in ids
                if i in self._rows
            ]

    def vector_of(self, item_id: str, *, joint: bool = False) -> np.ndarray:
        with self._lock:
            row = self._rows.get(item_id)
            if row is None:
                fail(Error.NOT_FOUND, f"item {item_id!r} is not in collection {self.name!r}")
            view = self._view
            if joint:
                if view.joint is None:
                    fail(Error.PRECONDITION, f"collection {self.name!r} has no joint image-word space")
                return view.joint.vector(row)
            return view.index.vector(row)

    # ------------------------------------------------------------------ writes

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

    def prepare_joint(self, vectors: np.ndarray) -> np.ndarray:
        """Joint-space vectors are always compared by cosine: unit rows (a zero row stays zero)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.settings.joint_dim:
            fail(Error.BAD_REQUEST, f"joint vectors must have dimension {self.settings.joint_dim}")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)

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
            record = {"op": "upsert", "ids": ids, "vectors": vectors.tobytes(), "payloads": payloads}
            if joint is not None:
                record["joint"] = np.ascontiguousarray(joint[keep], dtype=np.float32).tobytes()
            self._wal.append(record)
            self._apply(record)
            self._maybe_snapshot()
        return len(ids)

    def delete(self, ids: list[str]) -> int:
        with self._lock:
            present = [i for i in dict.fromkeys(ids) if i in self._rows]
            if not present:
                return 0
            record = {"op": "delete", "ids": present}
            self._wal.append(record)
            self._apply(record)
            self._maybe_snapshot()
            return len(present)

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
        return _View(index, joint_index, ann, list(ids), list(payloads))

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
            for item_id, row in zip(ids, rows, strict=True):
                self._rows[item_id] = int(row)
            view.ann.on_add(view.index, rows)
            if replaced:
                self._remove_rows(view, replaced)
        elif record["op"] == "delete":
            gone = [self._rows.pop(i) for i in record["ids"] if i in self._rows]
            if gone:
                self._remove_rows(view, gone)
        else:
            raise ValueError(f"unknown log record {record['op']!r}")

    @staticmethod
    def _remove_rows(view: _View, rows: list[int]) -> None:
        arr = np.array(rows, dtype=np.int64)
        view.index.remove(arr)
        view.ann.on_remove(arr)
        if view.joint is not None:
            view.joint.remove(arr)

    def _maybe_snapshot(self) -> None:
        if self._wal.size > self._snapshot_wal_bytes:
            self._snapshot_locked()

    def _snapshot_locked(self) -> None:
        view = self._view
        live = view.index.live_rows()
        ids = [view.row_ids[r] for r in live]
        payloads = [view.payloads[r] for r in live]
        vectors = np.ascontiguousarray(view.index.vectors(live))
        joint = np.ascontiguousarray(view.joint.vectors(live)) if view.joint is not None else None
        generation = self._generation + 1
        self._wal.close()
        snapshot.write(self.folder, generation, snapshot.SnapshotData(ids, payloads, vectors, joint))
        self._generation = generation
        self._wal = WriteAheadLog(snapshot.wal_path(self.folder, generation), fsync=self._fsync)
        # The snapshot holds live rows only; serving from the same compact layout drops cleared rows. With
        # none cleared the rows are already compact, and the approximate index stays as it is.
        if len(live) < view.index.rows:
            compact = self._build_view(ids, payloads, vectors, joint)
            compact.ann.adopt(view.ann, live, compact.index)
            self._view = compact
        self._view.ann.save(self.folder, generation)
