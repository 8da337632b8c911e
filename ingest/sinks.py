"""Where vectors go: a visionsearch collection, Parquet files, or a Milvus collection.

Each sink is also the job's record of what is done: ``existing`` asks it which ids it already holds, and a
rerun skips those. There is no separate progress journal, because a journal and the data can disagree (a
batch journaled but lost in the sink, or written but not journaled); the sink cannot disagree with itself.
Every write is an upsert keyed by the id (Parquet: a new part file, renamed into place whole), so a batch that
was written just before a kill and is written again after the rerun is still present once.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from visionsearch_client import Client, Item, VisionSearchError

from embedder.image import IMAGE_DIM

EXISTING_CHUNK = 1000  # ids per GetItems / Milvus query when looking for what is already written
RESERVED = ("id", "vector", "joint")


class SinkError(RuntimeError):
    """A sink that cannot be used; the message says what to fix."""


class Sink(Protocol):
    description: str
    default_write_batch: int

    def existing(self, ids: Sequence[str]) -> set[str]: ...

    def write(
        self, ids: list[str], vectors: np.ndarray, joint: np.ndarray | None, payloads: list[dict[str, str]]
    ) -> list[tuple[str, str]]:
        """Write a batch; returns the (id, reason) of items the sink refused (the rest are written)."""
        ...

    def close(self) -> None: ...


def _chunks(ids: Sequence[str], n: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


def column_name(key: str) -> str:
    """A payload key as a Parquet column or Milvus field; one that would shadow id/vector/joint is
    prefixed."""
    return f"payload_{key}" if key in RESERVED else key


class CollectionSink:
    """Bulk upserts of precomputed features into a collection of a running visionsearch server.

    The features are sent as they come out of the network (not normalised): the server normalises them for
    a cosine collection and, for a collection with a joint space, projects them itself, exactly as it does
    for an image it embeds."""

    default_write_batch = 128  # ~0.7 MB per UpsertRequest at 1280 dims, well under the 16 MiB message limit

    def __init__(
        self,
        address: str,
        name: str,
        *,
        create: bool,
        embedder: str | None,
        joint: str | None,
        timeout: float = 120.0,
    ) -> None:
        self.client = Client(address, timeout=timeout)
        self.name = name
        self.description = f"collection {name!r} at {address}"
        try:
            try:
                info = self.client.get_collection(name)
            except VisionSearchError as e:
                if e.code != grpc.StatusCode.NOT_FOUND or not create:
                    raise
                info = self.client.create_collection(
                    name, embedder=embedder or "mobilenet_v2", joint=joint or ""
                )
        except VisionSearchError as e:
            self.client.close()
            hint = " (pass --create to create it)" if e.code == grpc.StatusCode.NOT_FOUND else ""
            raise SinkError(f"{self.description}: {e}{hint}") from None
        if info.dim != IMAGE_DIM:
            raise SinkError(f"{self.description} has dimension {info.dim}; image features have {IMAGE_DIM}")
        if embedder and info.embedder and embedder != info.embedder:
            raise SinkError(f"{self.description} embeds with {info.embedder!r}, not {embedder!r}")
        if joint and joint != info.joint:
            raise SinkError(
                f"{self.description} has joint space {info.joint or 'none'!r}, not {joint!r}; the server "
                "projects upserted features into the collection's own joint space, so leave out --joint"
            )
        self.embedder = info.embedder or embedder or "mobilenet_v2"
        self.joint = info.joint

    def existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(ids, EXISTING_CHUNK):
            found.update(i.id for i in self.client.get_items(self.name, list(chunk)))
        return found

    def write(
        self, ids: list[str], vectors: np.ndarray, joint: np.ndarray | None, payloads: list[dict[str, str]]
    ) -> list[tuple[str, str]]:
        items = [Item(i, vector=v, payload=p) for i, v, p in zip(ids, vectors, payloads, strict=True)]
        try:
            self.client.upsert(self.name, items)
            return []
        except VisionSearchError as e:
            if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
        # An upsert is all-or-nothing: find the items the server refuses, and write the others.
        refused = []
        for item in items:
            try:
                self.client.upsert(self.name, [item])
            except VisionSearchError as e:
                if e.code != grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                refused.append((item.id, e.details))
        return refused

    def close(self) -> None:
        self.client.close()


class ParquetSink:
    """Part files ``part-<time>-<n>.parquet`` in a folder: id, vector, joint (with --joint), payload columns.

    A part is written to a hidden temporary name, flushed and renamed, so a reader (and a rerun) only ever
    sees whole parts."""

    default_write_batch = 2048

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.description = f"Parquet files in {folder}"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".part-*.tmp"):
            stale.unlink()  # a part a killed run was writing: its rows are not in any finished part
        self._stamp = time.strftime("%Y%m%d-%H%M%S")
        self._n = 0

    def parts(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.parquet"))

    def existing(self, ids: Sequence[str]) -> set[str]:
        done: set[str] = set()
        for part in self.parts():
            done.update(pq.read_table(part, columns=["id"]).column("id").to_pylist())
        return done & set(ids)

    def write(
        self, ids: list[str], vectors: np.ndarray, joint: np.ndarray | None, payloads: list[dict[str, str]]
    ) -> list[tuple[str, str]]:
        columns: dict[str, Any] = {
            "id": pa.array(ids, pa.string()),
            "vector": _float_lists(vectors),
        }
        if joint is not None:
            columns["joint"] = _float_lists(joint)
        for key in sorted({k for p in payloads for k in p}):
            columns[column_name(key)] = pa.array([p.get(key) for p in payloads], pa.string())
        self._n += 1
        name = f"part-{self._stamp}-{os.getpid()}-{self._n:06d}.parquet"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            pq.write_table(pa.table(columns), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.folder / name)
        return []

    def close(self) -> None:
        pass


def _float_lists(matrix: np.ndarray) -> pa.Array:
    m = np.ascontiguousarray(matrix, np.float32)
    return pa.ListArray.from_arrays(
        pa.array(np.arange(0, m.size + 1, m.shape[1], dtype=np.int32)), pa.array(m.reshape(-1))
    )


class MilvusSink:
    """Upserts into a Milvus collection (``pymilvus``): a Milvus server or cluster at a URI, or Milvus Lite at
    a local file path. A missing collection is created with a VARCHAR primary key ``id``, the FLOAT_VECTOR
    fields ``vector`` (and ``joint``), COSINE AUTOINDEX indexes, and dynamic fields for the payload."""

    default_write_batch = 512

    def __init__(self, uri: str, name: str, *, joint_dim: int, token: str = "") -> None:
        from pymilvus import DataType, MilvusClient

        self.name = name
        self.description = f"Milvus collection {name!r} at {uri}"
        try:
            self.client = MilvusClient(uri=uri, token=token)
            if not self.client.has_collection(name):
                schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
                schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
                schema.add_field("vector", DataType.FLOAT_VECTOR, dim=IMAGE_DIM)
                if joint_dim:
                    schema.add_field("joint", DataType.FLOAT_VECTOR, dim=joint_dim)
                index = self.client.prepare_index_params()
                index.add_index(field_name="vector", index_type="AUTOINDEX", metric_type="COSINE")
                if joint_dim:
                    index.add_index(field_name="joint", index_type="AUTOINDEX", metric_type="COSINE")
                self.client.create_collection(name, schema=schema, index_params=index)
            fields = {f["name"]: f for f in self.client.describe_collection(name)["fields"]}
        except Exception as e:  # pymilvus raises its own MilvusException and grpc/connection errors
            raise SinkError(f"{self.description}: {type(e).__name__}: {str(e)[:200]}") from None
        have = fields.get("joint", {}).get("params", {}).get("dim", 0)
        if int(have or 0) != joint_dim:
            want = f"a {joint_dim}-d joint field" if joint_dim else "no joint field"
            raise SinkError(f"{self.description} has joint dimension {have or 0}; this job writes {want}")

    def existing(self, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(ids, EXISTING_CHUNK):
            expr = f"id in {json.dumps(list(chunk))}"
            found.update(r["id"] for r in self.client.query(self.name, filter=expr, output_fields=["id"]))
        return found

    def write(
        self, ids: list[str], vectors: np.ndarray, joint: np.ndarray | None, payloads: list[dict[str, str]]
    ) -> list[tuple[str, str]]:
        rows = []
        for n, item_id in enumerate(ids):
            row: dict[str, Any] = {column_name(k): v for k, v in payloads[n].items()}
            row |= {"id": item_id, "vector": vectors[n].tolist()}
            if joint is not None:
                row["joint"] = joint[n].tolist()
            rows.append(row)
        self.client.upsert(self.name, rows)
        return []

    def close(self) -> None:
        self.client.flush(self.name)
        self.client.close()
