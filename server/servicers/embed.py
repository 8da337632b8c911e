from __future__ import annotations

import grpc
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from server.errors import Error, fail, rpc_method
from server.limits import check_word
from server.servicers.common import call_budget
from server.services import Services
from server.tracing import span
from server.wire import vector_to_pb


class EmbedServicer(pb_grpc.EmbedServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Embed(self, request: pb.EmbedRequest, context: grpc.ServicerContext) -> pb.EmbedResponse:
        which = request.WhichOneof("input")
        if which == "image":
            b = call_budget(context, "embedding the image")
            with span("embed"):
                vec = self.s.images.embed([request.image], deadline=b.deadline, cancelled=b.cancelled)[0]
            model = self.s.images.model_name
        elif which == "word":
            if not request.word.strip():
                fail(Error.BAD_REQUEST, "word is empty")
            check_word(request.word)
            vec = self.s.words.vector(request.word)
            model = self.s.words.model_name
        else:
            fail(Error.BAD_REQUEST, "EmbedRequest is empty: set `image` (encoded bytes) or `word`")
        return pb.EmbedResponse(vector=vector_to_pb(vec), dim=int(vec.shape[0]), model=model)
