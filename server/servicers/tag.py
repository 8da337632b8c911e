from __future__ import annotations

import grpc
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from server.errors import Error, fail, rpc_method
from server.services import Services


class TagServicer(pb_grpc.TagServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Tag(self, request: pb.TagRequest, context: grpc.ServicerContext) -> pb.TagResponse:
        fail(
            Error.UNIMPLEMENTED,
            "Tag needs the joint image-word space (ConSE or a trained DeViSE head), which this server does "
            "not serve yet; use NearestWords for word -> word and Search for image -> image",
        )
