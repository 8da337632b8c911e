"""Collections held by Milvus (pymilvus): the second storage backend.

The embedders, Tag and the joint projection stay in visionsearch; Milvus holds the vectors, payloads and
settings, and answers searches, filters and scrolls. A server over Milvus keeps no collection state of its
own, so several can run behind one load balancer: what a collection is, and what it holds, is read from
Milvus on every call (a collection created through one server is seen by the others at once).

Layout in Milvus: one Milvus collection per visionsearch collection (``id`` VARCHAR primary key, ``vector``,
``joint`` when there is a joint space, and the payload as JSON), plus ``visionsearch_meta`` holding each
collection's settings. Filters become Milvus expressions (``milvus_filters``). Milvus not answering is
UNAVAILABLE naming its URI, and local collections keep being served.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np

from kernels.payload_index import Node
from server.errors import Error, fail, quote
from server.storage.collection import CollectionSettings, Hit, VectorSpaces, payload_bytes, validate_id
from server.storage.milvus_filters import expression, index_fields

log = logging.getLogger("visionsearch.milvus")

META = "visionsearch_meta"
PREFIX = "vs_"  # Milvus names allow [A-Za-z0-9_]; ours also allow "-": they are mapped below
T = TypeVar("T")


def milvus_name(name: str) -> str:
    return PREFIX + name.replace("-", "_h_")


class MilvusUnavailable(Exception):
    pass


class MilvusBackend:
    """One connection to one Milvus (a server at a URI, or Milvus Lite at a local file)."""

    def __init__(self, uri: str, token: str = "") -> None:
        self.uri = uri
        self._token = token
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                with self.errors():
                    self._client = (
                        MilvusClient(self.uri, token=self._token) if self._token else MilvusClient(self.uri)
                    )
                    self._ensure_meta()
            return self._client

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Milvus failures as statuses: not answering is UNAVAILABLE with the URI."""
        from pymilvus.exceptions import MilvusException

        try:
            yield
        except MilvusException as e:
            text = str(getattr(e, "message", e))[:200]
            log.warning("Milvus at %s: %s", self.uri, text)
            fail(Error.UNAVAILABLE, f"Milvus at {self.uri} did not answer: {text}")
        except (OSError, ConnectionError, TimeoutError) as e:
            fail(
                Error.UNAVAILABLE, f"Milvus at {self.uri} did not answer ({type(e).__name__}: {str(e)[:150]})"
            )

    def call(self, fn: Callable[[Any], T]) -> T:
        client = self.client
        with self.errors():
            return fn(client)

    def _ensure_meta(self) -> None:
        from pymilvus import DataType, MilvusClient

        c = self._client
        if c.has_collection(META):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("name", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("settings", DataType.JSON)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field
        index = c.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        c.create_collection(META, schema=schema, index_params=index)

    # ---------------------------------------------------------------- the catalogue

    def settings_of(self, name: str) -> CollectionSettings | None:
        rows = self.call(
            lambda c: c.query(META, filter=f"name == {json.dumps(name)}", output_fields=["settings"])
        )
        return CollectionSettings.from_dict(rows[0]["settings"]) if rows else None

    def names(self) -> list[str]:
        rows = self.call(lambda c: c.query(META, filter='name != ""', output_fields=["name"], limit=16384))
        return sorted(r["name"] for r in rows)

    def save_settings(self, settings: CollectionSettings) -> None:
        row = {"name": settings.name, "settings": asdict(settings), "unused": [0.0, 0.0]}
        self.call(lambda c: c.upsert(META, [row]))

    def create(self, settings: CollectionSettings) -> MilvusCollection:
        from pymilvus import DataType, MilvusClient

        name = milvus_name(settings.name)
        metric = "COSINE" if settings.metric == "cosine" else "IP"

        def make(c: Any) -> None:
            if c.has_collection(name):
                fail(
                    Error.ALREADY_EXISTS,
                    f"collection {settings.name!r} already exists in Milvus at {self.uri}",
                )
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=settings.dim)
            if settings.joint:
                schema.add_field("joint", DataType.FLOAT_VECTOR, dim=settings.joint_dim)
            schema.add_field("payload", DataType.JSON)
            schema.add_field("terms", DataType.JSON)  # what filters read (milvus_filters.index_fields)
            schema.add_field("nums", DataType.JSON)
            index = c.prepare_index_params()
            index.add_index("vector", index_type="AUTOINDEX", metric_type=metric)
            if settings.joint:
                index.add_index("joint", index_type="AUTOINDEX", metric_type="COSINE")
            c.create_collection(name, schema=schema, index_params=index)
            c.load_collection(name)

        self.call(make)
        self.save_settings(settings)
        return MilvusCollection(self, settings)

    def drop(self, name: str) -> None:
        self.call(lambda c: c.drop_collection(milvus_name(name)))
        self.call(lambda c: c.delete(META, ids=[name]))


class MilvusCollection(VectorSpaces):
    """A collection whose items live in Milvus; the same methods as the local ``Collection``."""

    wal_bytes = 0

    def __init__(self, backend: MilvusBackend, settings: CollectionSettings) -> None:
        self.notes: list[str] = []
        self.backend = backend
        self.settings = settings
        self._mname = milvus_name(settings.name)
        self.last_snapshot_time = time.time()

    # ---------------------------------------------------------------- reads

    def __len__(self) -> int:
        return self.count(None)

    def count(self, filter: Node | None = None) -> int:
        expr = expression(filter) if filter is not None else ""
        rows = self.backend.call(lambda c: c.query(self._mname, filter=expr, output_fields=["count(*)"]))
        return int(rows[0]["count(*)"])

    def __contains__(self, item_id: str) -> bool:
        return bool(self._rows([item_id], ["id"]))

    @property
    def rows(self) -> int:
        return 0

    def inline_ok(self) -> bool:
        return False  # a network round trip: never on the event loop

    def approximate(self) -> bool:
        return True

    def index_kind(self) -> str:
        return "milvus"

    def index_build_progress(self) -> float | None:
        return None

    def index_in_use(self) -> str:
        return f"milvus: AUTOINDEX in Milvus at {self.backend.uri}"

    def filter_planning(self) -> str:
        return "filters run in Milvus, as expressions on the payload JSON"

    def max_effort(self) -> int:
        return 1024

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
        if joint and not self.settings.joint:
            fail(Error.PRECONDITION, f"collection {self.name!r} has no joint image-word space")
        expr = expression(filter) if filter is not None else ""
        field = "joint" if joint else "vector"
        metric = "COSINE" if joint or self.settings.metric == "cosine" else "IP"
        params: dict[str, Any] = {"metric_type": metric}
        if effort:
            params["params"] = {"ef": max(effort, k)}
        found = self.backend.call(
            lambda c: c.search(
                self._mname, data=queries.tolist(), anns_field=field, limit=k, filter=expr,
                output_fields=["payload"], search_params=params,
            )
        )  # fmt: skip
        if notes is not None and filter is not None:
            notes.append(f"filter run in Milvus as: {expr[:200]}")
        return [
            [Hit(h["id"], float(h["distance"]), h["entity"]["payload"], -1) for h in hits] for hits in found
        ]

    def hit_vector(self, hit: Hit, *, joint: bool = False) -> np.ndarray:
        return self.vector_of(hit.id, joint=joint)

    def _rows(self, ids: list[str], fields: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        return list(self.backend.call(lambda c: c.get(self._mname, ids=ids, output_fields=fields)))

    def get(
        self, ids: list[str], *, with_vectors: bool = True
    ) -> list[tuple[str, dict[str, Any], np.ndarray | None]]:
        rows = {
            r["id"]: r
            for r in self._rows(
                list(dict.fromkeys(ids)), ["payload", "vector"] if with_vectors else ["payload"]
            )
        }
        out = []
        for i in ids:
            r = rows.get(i)
            if r is not None:
                vector = np.asarray(r["vector"], np.float32) if with_vectors else None
                out.append((i, r["payload"], vector))
        return out

    def measure(self, ids: list[str]) -> tuple[int, int]:
        rows = self._rows(list(dict.fromkeys(ids)), ["payload"])
        return len(rows), sum(payload_bytes(r["payload"]) for r in rows)

    def vector_of(self, item_id: str, *, joint: bool = False) -> np.ndarray:
        field = "joint" if joint else "vector"
        if joint and not self.settings.joint:
            fail(Error.PRECONDITION, f"collection {self.name!r} has no joint image-word space")
        rows = self._rows([item_id], [field])
        if not rows:
            fail(Error.NOT_FOUND, f"item {quote(item_id)} is not in collection {self.name!r}")
        return np.asarray(rows[0][field], np.float32)

    def scroll(
        self, after: str | None, limit: int, filter: Node | None, with_vectors: bool
    ) -> tuple[list[tuple[str, dict[str, Any], np.ndarray | None]], str | None]:
        parts = [f"id > {json.dumps(after)}"] if after is not None else []
        if filter is not None:
            parts.append(f"({expression(filter)})")
        fields = ["payload", "vector"] if with_vectors else ["payload"]

        def page(c: Any) -> list[dict[str, Any]]:
            # The query iterator pages in primary-key order (a plain query with a limit does not).
            it = c.query_iterator(
                self._mname, batch_size=limit, filter=" and ".join(parts), output_fields=fields
            )
            try:
                return list(it.next())
            finally:
                it.close()

        rows = self.backend.call(page)
        out = [
            (r["id"], r["payload"], np.asarray(r["vector"], np.float32) if with_vectors else None)
            for r in rows
        ]
        return out, (rows[-1]["id"] if len(rows) == limit else None)

    # ---------------------------------------------------------------- writes

    def upsert(
        self,
        ids: list[str],
        vectors: np.ndarray,
        payloads: list[dict[str, Any]],
        joint: np.ndarray | None = None,
    ) -> int:
        for i in ids:
            validate_id(i)
        last = {item_id: n for n, item_id in enumerate(ids)}
        rows = []
        for item_id, n in last.items():
            row: dict[str, Any] = {"id": item_id, "vector": vectors[n].tolist()}
            if joint is not None:
                row["joint"] = joint[n].tolist()
            rows.append(self._with_payload(row, payloads[n]))
        self.backend.call(lambda c: c.upsert(self._mname, rows))
        return len(rows)

    def delete(self, ids: list[str]) -> int:
        present = [r["id"] for r in self._rows(list(dict.fromkeys(ids)), ["id"])]
        if present:
            self.backend.call(lambda c: c.delete(self._mname, ids=present))
        return len(present)

    def delete_where(self, node: Node) -> int:
        expr = expression(node)
        rows = self.backend.call(
            lambda c: c.query(self._mname, filter=expr, output_fields=["id"], limit=16384)
        )
        return self.delete([r["id"] for r in rows])

    def set_payload(self, ids: list[str], changes: dict[str, Any]) -> int:
        return self._rewrite(ids, lambda p: p | changes)

    def delete_payload_keys(self, ids: list[str], keys: list[str]) -> int:
        drop = set(keys)
        return self._rewrite(ids, lambda p: {k: v for k, v in p.items() if k not in drop})

    def _rewrite(self, ids: list[str], change: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        # Milvus rewrites whole rows: read them, change the payloads, write them back.
        fields = ["payload", "vector"] + (["joint"] if self.settings.joint else [])
        rows = [
            self._with_payload(r, change(r["payload"])) for r in self._rows(list(dict.fromkeys(ids)), fields)
        ]
        if rows:
            self.backend.call(lambda c: c.upsert(self._mname, rows))
        return len(rows)

    def _with_payload(self, row: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
        terms, nums = index_fields(payload, self.settings.indexed)
        return row | {"payload": payload, "terms": terms, "nums": nums}

    def reconfigure(self, settings: CollectionSettings) -> None:
        reindex = settings.payload_indexes != self.settings.payload_indexes
        self.backend.save_settings(settings)
        self.settings = settings
        if not reindex:
            return
        # The filter fields of every row follow the new indexes: rewrite the rows, a page at a time.
        fields = ["payload", "vector"] + (["joint"] if settings.joint else [])

        def rewrite(c: Any) -> None:
            it = c.query_iterator(self._mname, batch_size=1000, filter="", output_fields=fields)
            try:
                while page := it.next():
                    c.upsert(self._mname, [self._with_payload(r, r["payload"]) for r in page])
            finally:
                it.close()

        self.backend.call(rewrite)

    def close(self, reason: str = "closed", *, flush: bool = True) -> None:
        pass

    def wait_for_index(self, timeout: float | None = None) -> bool:
        return True


def settings_for(name: str, raw: dict[str, Any]) -> CollectionSettings:
    return CollectionSettings.from_dict(raw | {"name": name})
