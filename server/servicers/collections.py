from __future__ import annotations

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.image import embedder_names, input_size
from kernels.hnsw import HNSW_DEFAULTS
from server.errors import Error, fail, rpc_method
from server.servicers.common import call_budget
from server.services import Services
from server.storage import Collection, CollectionSettings
from server.wire import (
    INDEX_ENUMS,
    METRIC_ENUMS,
    METRIC_NAMES,
    index_name,
    recall_target,
    vector_from_pb,
    vector_to_pb,
)


def collection_info(c: Collection) -> pb.CollectionInfo:
    st = c.settings
    config = pb.CollectionConfig(
        name=st.name,
        dim=st.dim,
        metric=METRIC_ENUMS[st.metric],
        embedder=st.embedder,
        joint=st.joint,
        index=INDEX_ENUMS[st.index],
        recall_target=st.recall_target,
        hnsw=pb.HnswConfig(connectivity=st.hnsw_connectivity, expansion_add=st.hnsw_expansion_add),
    )
    return pb.CollectionInfo(
        config=config, count=len(c), joint_dim=st.joint_dim, index_in_use=c.index_in_use()
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
        )
        if cfg.joint.startswith(("head:", "head+conse:")) and cfg.embedder in embedder_names():
            # A head maps features of one input size; the collection must embed its images at that size.
            head = self.s.joint(cfg.joint, cfg.embedder)
            if head.input_size != input_size(cfg.embedder):
                fail(
                    Error.PRECONDITION,
                    f"head {cfg.joint!r} was trained on {head.input_size} px features but embedder "
                    f"{cfg.embedder!r} embeds at {input_size(cfg.embedder)} px: "
                    f"use embedder '{cfg.embedder.partition('@')[0]}@{head.input_size}'",
                )
        return collection_info(self.s.store.create(settings))

    @rpc_method
    def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CollectionInfo:
        return collection_info(self.s.store.get(request.name))

    @rpc_method
    def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext
    ) -> pb.ListCollectionsResponse:
        return pb.ListCollectionsResponse(collections=[collection_info(c) for c in self.s.store.list()])

    @rpc_method
    def DropCollection(
        self, request: pb.DropCollectionRequest, context: grpc.ServicerContext
    ) -> pb.DropCollectionResponse:
        self.s.store.drop(request.name)
        return pb.DropCollectionResponse()

    @rpc_method
    def UpdateCollection(
        self, request: pb.UpdateCollectionRequest, context: grpc.ServicerContext
    ) -> pb.CollectionInfo:
        c = self.s.store.update(request.name, index_name(request.index), recall_target(request.recall_target))
        return collection_info(c)

    @rpc_method
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> pb.UpsertResponse:
        c = self.s.store.get(request.collection)
        if not request.items:
            fail(Error.BAD_REQUEST, "UpsertRequest has no items")
        vectors = np.empty((len(request.items), c.settings.dim), np.float32)
        image_slots: list[int] = []
        images: list[bytes] = []
        for n, item in enumerate(request.items):
            which = item.WhichOneof("data")
            if which == "vector":
                v = vector_from_pb(item.vector, f"item {n} ({item.id!r}) vector")
                if v.shape[0] != c.settings.dim:
                    fail(
                        Error.BAD_REQUEST,
                        f"item {n} ({item.id!r}) vector has dimension {v.shape[0]} but collection "
                        f"{c.name!r} has dimension {c.settings.dim}",
                    )
                vectors[n] = v
            elif which == "image":
                image_slots.append(n)
                images.append(item.image)
            else:
                fail(Error.BAD_REQUEST, f"item {n} ({item.id!r}) has neither a vector nor an image")
        if images:
            if not c.settings.embedder:
                fail(
                    Error.PRECONDITION, f"collection {c.name!r} has no image embedder: upsert vectors instead"
                )
            b = call_budget(context, "embedding the items' images")
            vectors[image_slots] = self.s.image_embedder(c.settings.embedder).embed(
                images, size=input_size(c.settings.embedder), deadline=b.deadline, cancelled=b.cancelled
            )
        prepared = c.prepare_vectors(vectors, "an item's vector")
        joint = None
        if c.settings.joint:
            joint = c.prepare_joint(self.s.joint(c.settings.joint, c.settings.embedder).project(vectors))
        upserted = c.upsert(
            [i.id for i in request.items], prepared, [dict(i.payload) for i in request.items], joint
        )
        return pb.UpsertResponse(upserted=upserted, count=len(c))

    @rpc_method
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> pb.DeleteResponse:
        c = self.s.store.get(request.collection)
        deleted = c.delete(list(request.ids))
        return pb.DeleteResponse(deleted=deleted, count=len(c))

    @rpc_method
    def GetItems(self, request: pb.GetItemsRequest, context: grpc.ServicerContext) -> pb.GetItemsResponse:
        c = self.s.store.get(request.collection)
        resp = pb.GetItemsResponse()
        for item_id, payload, vector in c.get(list(request.ids)):
            item = resp.items.add(id=item_id, payload=payload)
            if request.with_vector:
                item.vector.CopyFrom(vector_to_pb(vector))
        return resp

    @rpc_method
    def Count(self, request: pb.CountRequest, context: grpc.ServicerContext) -> pb.CountResponse:
        return pb.CountResponse(count=len(self.s.store.get(request.collection)))
