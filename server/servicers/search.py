from __future__ import annotations

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from server.errors import Error, fail, rpc_method
from server.servicers.common import check_deadline
from server.services import Services
from server.storage import Collection
from server.wire import check_k, vector_from_pb, vector_to_pb


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        k = check_k(request.k, self.s.config.max_k)
        c = self.s.store.get(request.collection)
        which = request.WhichOneof("query")
        exclude = None
        if which == "vector":
            query = c.prepare_vectors(vector_from_pb(request.vector, "query vector")[None, :], "query vector")
        elif which == "image":
            query = c.prepare_vectors(self._embed_image(c, request.image, context), "query image's embedding")
        elif which == "id":
            # "More like this": the item itself is not one of its own neighbours.
            query = c.vector_of(request.id)[None, :]
            exclude = request.id
        else:
            fail(Error.BAD_REQUEST, "SearchRequest has no query: set `vector`, `image` or `id`")
        hits = c.search(query, k + (exclude is not None))[0]
        if exclude is not None:
            hits = [h for h in hits if h.id != exclude][:k]
        cosine = c.settings.metric == "cosine"
        resp = pb.SearchResponse()
        for h in hits:
            hit = resp.hits.add(id=h.id, score=h.score, distance=1.0 - h.score if cosine else -h.score)
            if request.with_payload:
                hit.payload.update(h.payload)
            if request.with_vector:
                hit.vector.CopyFrom(vector_to_pb(c.vector_of_row(h.row)))
        return resp

    def _embed_image(self, c: Collection, image: bytes, context: grpc.ServicerContext) -> np.ndarray:
        if c.settings.embedder != self.s.images.model_name:
            fail(
                Error.PRECONDITION,
                f"collection {c.name!r} has no image embedder: query it with a vector or an item id",
            )
        check_deadline(context, "embedding the query image")
        return self.s.images.embed([image])

    @rpc_method
    def NearestWords(
        self, request: pb.NearestWordsRequest, context: grpc.ServicerContext
    ) -> pb.NearestWordsResponse:
        k = check_k(request.k, self.s.config.max_k)
        if not request.word.strip():
            fail(Error.BAD_REQUEST, "word is empty")
        vec = self.s.words.vector(request.word)
        resp = pb.NearestWordsResponse()
        for word, score in self.s.nearest_words(vec, k):
            resp.hits.add(word=word, score=score, distance=max(0.0, 1.0 - score))
        return resp
