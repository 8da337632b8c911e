from __future__ import annotations

import uuid
from typing import Any

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.image import embedder_names, input_size
from kernels.hnsw import HNSW_DEFAULTS
from server.errors import Error, fail, quote, rpc_method
from server.filters import (
    TYPE_ENUMS,
    check_types,
    compile_filter,
    indexes_from_pb,
    payload_from_pb,
    split_payload,
)
from server.handlers import current_key
from server.limits import MAX_IDS, MAX_ITEMS, MAX_SCROLL, check_batch_memory, check_count, check_response_size
from server.servicers.common import call_budget, request_filter
from server.services import Services
from server.storage import AnyCollection, CollectionSettings
from server.storage.collection import validate_id
from server.storage.store import Damaged
from server.tracing import span
from server.wire import (
    INDEX_ENUMS,
    METRIC_ENUMS,
    METRIC_NAMES,
    index_name,
    recall_target,
    vector_from_pb,
    vector_to_pb,
)


def _config(st: CollectionSettings) -> pb.CollectionConfig:
    return pb.CollectionConfig(
        name=st.name,
        dim=st.dim,
        metric=METRIC_ENUMS[st.metric],
        embedder=st.embedder,
        joint=st.joint,
        index=INDEX_ENUMS[st.index],
        recall_target=st.recall_target,
        hnsw=pb.HnswConfig(connectivity=st.hnsw_connectivity, expansion_add=st.hnsw_expansion_add),
        payload_indexes=[pb.PayloadIndex(key=k, type=TYPE_ENUMS[t]) for k, t in st.payload_indexes],
        backend=st.backend,
        vector_dtype=st.graph_dtype,
    )


def item_pb(item_id: str, payload: dict[str, Any], vector: np.ndarray | None) -> pb.Item:
    strings, typed = split_payload(payload)
    item = pb.Item(id=item_id, payload=strings, fields=typed)
    if vector is not None:
        item.vector.CopyFrom(vector_to_pb(vector))
    return item


def collection_info(c: AnyCollection) -> pb.CollectionInfo:
    st = c.settings
    return pb.CollectionInfo(
        config=_config(st),
        count=len(c),
        joint_dim=st.joint_dim,
        index_in_use=c.index_in_use(),
        state=pb.COLLECTION_STATE_READY,
        state_reason="; ".join(c.notes)[:1000],
        filter_planning=c.filter_planning(),
    )


def damaged_info(d: Damaged) -> pb.CollectionInfo:
    config = _config(d.settings) if d.settings else pb.CollectionConfig(name=d.name)
    return pb.CollectionInfo(
        config=config,
        joint_dim=d.settings.joint_dim if d.settings else 0,
        state=pb.COLLECTION_STATE_DAMAGED,
        state_reason=d.reason[:1000],
    )


class CollectionServicer(pb_grpc.CollectionServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CollectionInfo:
        cfg = request.config
        metric = pb.METRIC_COSINE if cfg.metric == pb.METRIC_UNSPECIFIED else cfg.metric
        if metric not in METRIC_NAMES:
            fail(Error.BAD_REQUEST, f"metric {cfg.metric} is not a known Metric value")
        settings = CollectionSettings(
            cfg.name,
            cfg.dim,
            METRIC_NAMES[metric],
            cfg.embedder,
            cfg.joint,
            index=index_name(cfg.index),
            recall_target=recall_target(cfg.recall_target),
            hnsw_connectivity=cfg.hnsw.connectivity or HNSW_DEFAULTS.connectivity,
            hnsw_expansion_add=cfg.hnsw.expansion_add or HNSW_DEFAULTS.expansion_add,
            payload_indexes=tuple(indexes_from_pb(cfg.payload_indexes).items()),
            uid=uuid.uuid4().hex,
            backend=cfg.backend or "local",
            vector_dtype=cfg.vector_dtype,
        )
        if cfg.joint.startswith(("head:", "head+conse:")) and cfg.embedder in embedder_names():
            # A head maps features of one input size; the collection must embed its images at that size.
            head = self.s.joint(cfg.joint, cfg.embedder)
            if head.input_size != input_size(cfg.embedder):
                fail(
                    Error.PRECONDITION,
                    f"head {quote(cfg.joint)} was trained on {head.input_size} px features but embedder "
                    f"{quote(cfg.embedder)} embeds at {input_size(cfg.embedder)} px: "
                    f"use embedder '{cfg.embedder.partition('@')[0]}@{head.input_size}'",
                )
        info = collection_info(self.s.store.create(settings))
        if self.s.collection_health is not None:
            self.s.collection_health.ready(settings.name)
        return info

    @rpc_method
    def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CollectionInfo:
        damaged = self.s.store.damaged.get(request.name)
        if damaged is not None:
            return damaged_info(damaged)
        return collection_info(self.s.store.get(request.name))

    @rpc_method
    def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> pb.ListCollectionsResponse:
        key = current_key.get()
        visible = set(key.collections) if key is not None and key.collections else None  # a limited key
        infos = [collection_info(c) for c in self.s.store.list() if visible is None or c.name in visible]
        infos += [
            damaged_info(d) for d in self.s.store.list_damaged() if visible is None or d.name in visible
        ]
        return pb.ListCollectionsResponse(collections=sorted(infos, key=lambda i: i.config.name))

    @rpc_method
    def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.ServicerContext
    ) -> pb.DropCollectionResponse:
        self.s.store.drop(request.name)
        if self.s.collection_health is not None:
            self.s.collection_health.dropped(request.name)
        return pb.DropCollectionResponse()

    @rpc_method
    def UpdateCollection(
        self, request: pb.UpdateCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CollectionInfo:
        if request.HasField("update_mask"):
            changes = self._masked_changes(request)
        else:
            # Without a mask, the two original fields; unset (0) means unchanged.
            changes = {}
            if request.index != pb.INDEX_UNSPECIFIED:
                changes["index"] = index_name(request.index)
            if request.recall_target:
                changes["recall_target"] = recall_target(request.recall_target)
        return collection_info(self.s.store.update(request.name, changes))

    @staticmethod
    def _masked_changes(request: pb.UpdateCollectionRequest) -> dict[str, object]:
        cfg = request.config
        changes: dict[str, object] = {}
        for path in request.update_mask.paths:
            if path == "recall_target":
                changes["recall_target"] = recall_target(cfg.recall_target)
            elif path == "index":
                changes["index"] = index_name(cfg.index)
            elif path == "hnsw.connectivity":
                changes["hnsw_connectivity"] = cfg.hnsw.connectivity or HNSW_DEFAULTS.connectivity
            elif path == "hnsw.expansion_add":
                changes["hnsw_expansion_add"] = cfg.hnsw.expansion_add or HNSW_DEFAULTS.expansion_add
            elif path == "hnsw":
                changes["hnsw_connectivity"] = cfg.hnsw.connectivity or HNSW_DEFAULTS.connectivity
                changes["hnsw_expansion_add"] = cfg.hnsw.expansion_add or HNSW_DEFAULTS.expansion_add
            elif path == "payload_indexes":
                changes["payload_indexes"] = tuple(indexes_from_pb(cfg.payload_indexes).items())
            elif path in ("name", "dim", "metric", "embedder", "joint"):
                fail(Error.BAD_REQUEST, f"update_mask: {path!r} cannot change: create a new collection")
            else:
                fail(
                    Error.BAD_REQUEST,
                    f"update_mask names {quote(path, 60)}, not a field UpdateCollection can change "
                    "(recall_target, payload_indexes, index, hnsw.connectivity, hnsw.expansion_add)",
                )
        if not request.update_mask.paths:
            fail(Error.BAD_REQUEST, "update_mask is empty: name the fields of `config` to change")
        return changes

    @rpc_method
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> pb.UpsertResponse:
        c = self.s.store.get(request.collection)
        if not request.items:
            fail(Error.BAD_REQUEST, "UpsertRequest has no items")
        check_count("UpsertRequest.items", len(request.items), MAX_ITEMS, "split it into several calls")
        check_batch_memory(len(request.items), c.settings.dim)
        payloads = []
        indexed = c.settings.indexed
        for n, item in enumerate(request.items):
            if item.WhichOneof("data") is None:
                fail(Error.BAD_REQUEST, f"item {n} ({quote(item.id, 40)}) has neither a vector nor an image")
            validate_id(item.id, f"item {n}")
            where = f"item {n} ({quote(item.id, 40)})"
            payload = payload_from_pb(item.payload, item.fields, where)
            check_types(payload, indexed, where)
            payloads.append(payload)
        vectors = np.empty((len(request.items), c.settings.dim), np.float32)
        image_slots: list[int] = []
        images: list[bytes] = []
        for n, item in enumerate(request.items):
            which = item.WhichOneof("data")
            if which == "vector":
                v = vector_from_pb(item.vector, f"item {n} ({quote(item.id, 40)}) vector")
                if v.shape[0] != c.settings.dim:
                    fail(
                        Error.BAD_REQUEST,
                        f"item {n} ({quote(item.id, 40)}) vector has dimension {v.shape[0]} but collection "
                        f"{c.name!r} has dimension {c.settings.dim}",
                    )
                vectors[n] = v
            else:
                image_slots.append(n)
                images.append(item.image)
        if images:
            if not c.settings.embedder:
                fail(
                    Error.PRECONDITION, f"collection {c.name!r} has no image embedder: upsert vectors instead"
                )
            b = call_budget(context, "embedding the items' images")
            with span("embed"):
                vectors[image_slots] = self.s.image_embedder(c.settings.embedder).embed(
                    images, size=input_size(c.settings.embedder), deadline=b.deadline, cancelled=b.cancelled
                )
        prepared = c.prepare_vectors(vectors, "an item's vector")
        joint = None
        if c.settings.joint:
            joint = c.prepare_joint(self.s.joint(c.settings.joint, c.settings.embedder).project(vectors))
        with span("write"):
            upserted = c.upsert([i.id for i in request.items], prepared, payloads, joint)
        return pb.UpsertResponse(upserted=upserted, count=len(c))

    @rpc_method
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        c = self.s.store.get(request.collection)
        check_count("DeleteRequest.ids", len(request.ids), MAX_IDS, "split it into several calls")
        if request.HasField("filter"):
            if request.ids:
                fail(Error.BAD_REQUEST, "DeleteRequest has both ids and a filter: give one or the other")
            deleted = c.delete_where(compile_filter(request.filter, c.settings.indexed))
        else:
            deleted = c.delete(list(request.ids))
        return pb.DeleteResponse(deleted=deleted, count=len(c))

    @rpc_method
    def GetItems(self, request: pb.GetItemsRequest, context: grpc.ServicerContext) -> pb.GetItemsResponse:
        c = self.s.store.get(request.collection)
        ids = list(request.ids)
        check_count("GetItemsRequest.ids", len(ids), MAX_IDS, "split it into several calls")
        present, payload_bytes = c.measure(ids)
        check_response_size(
            present,
            c.settings.dim * 4 if request.with_vector else 0,
            payload_bytes,
            self.s.config.max_message_bytes,
            "ask for fewer ids per call" + (", or without vectors" if request.with_vector else ""),
        )
        items = [item_pb(*found) for found in c.get(ids, with_vectors=request.with_vector)]
        return pb.GetItemsResponse(items=items)

    @rpc_method
    def Count(self, request: pb.CountRequest, context: grpc.ServicerContext) -> pb.CountResponse:
        c = self.s.store.get(request.collection)
        if request.HasField("filter"):
            return pb.CountResponse(count=c.count(request_filter(c, request)))
        return pb.CountResponse(count=len(c))

    @rpc_method
    def Scroll(self, request: pb.ScrollRequest, context: grpc.ServicerContext) -> pb.ScrollResponse:
        c = self.s.store.get(request.collection)
        limit = request.limit or 100
        if not 1 <= limit <= MAX_SCROLL:
            fail(Error.BAD_REQUEST, f"limit must be 1..{MAX_SCROLL} (0 means 100), got {request.limit}")
        after = self.s.cursors.read(request.cursor, c.name, c.settings.uid) if request.cursor else None
        where = request_filter(c, request)
        check_response_size(
            limit, c.settings.dim * 4 if request.with_vector else 0, 0, self.s.config.max_message_bytes,
            "ask for a smaller limit, or without vectors",
        )  # fmt: skip
        found, last = c.scroll(after, limit, where, request.with_vector)
        items = [item_pb(i, {} if request.without_payload else p, v) for i, p, v in found]
        cursor = self.s.cursors.make(c.name, c.settings.uid, last) if last is not None else ""
        return pb.ScrollResponse(items=items, next_cursor=cursor)

    @rpc_method
    def SetPayload(
        self, request: pb.SetPayloadRequest, context: grpc.ServicerContext
    ) -> pb.SetPayloadResponse:
        c = self.s.store.get(request.collection)
        ids = self._payload_ids(request.ids, "SetPayloadRequest")
        changes = payload_from_pb(request.payload, request.fields, "SetPayloadRequest")
        if not changes:
            fail(Error.BAD_REQUEST, "SetPayloadRequest sets nothing: give payload or fields")
        check_types(changes, c.settings.indexed, "SetPayloadRequest")
        return pb.SetPayloadResponse(updated=c.set_payload(ids, changes))

    @rpc_method
    def DeletePayloadKeys(
        self, request: pb.DeletePayloadKeysRequest, context: grpc.ServicerContext
    ) -> pb.DeletePayloadKeysResponse:
        c = self.s.store.get(request.collection)
        ids = self._payload_ids(request.ids, "DeletePayloadKeysRequest")
        if not request.keys:
            fail(Error.BAD_REQUEST, "DeletePayloadKeysRequest names no keys")
        return pb.DeletePayloadKeysResponse(updated=c.delete_payload_keys(ids, list(request.keys)))

    @staticmethod
    def _payload_ids(ids: Any, what: str) -> list[str]:
        if not ids:
            fail(Error.BAD_REQUEST, f"{what} names no ids")
        check_count(f"{what}.ids", len(ids), MAX_IDS, "split it into several calls")
        return list(ids)
