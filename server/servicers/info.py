from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import grpc
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.image import MAX_ASPECT, embedder_names, input_size
from server import limits
from server.errors import rpc_method
from server.services import Services
from server.storage.collection import MAX_DIM
from server.wire import INDEX_ENUMS, MAX_EFFORT


def server_version() -> str:
    try:
        return version("visionsearch")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class ServerServicer(pb_grpc.ServerServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def GetServerInfo(
        self, request: pb.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetServerInfoResponse:
        cfg = self.s.config
        return pb.GetServerInfoResponse(
            version=server_version(),
            limits=pb.Limits(
                max_message_bytes=cfg.max_message_bytes,
                max_k=cfg.max_k,
                max_pixels=cfg.max_pixels,
                max_aspect=MAX_ASPECT,
                max_ids=limits.MAX_IDS,
                max_items=limits.MAX_ITEMS,
                max_batch_bytes=limits.MAX_BATCH_BYTES,
                max_words=limits.MAX_WORDS,
                max_sentence_chars=limits.MAX_SENTENCE_CHARS,
                max_word_chars=limits.MAX_WORD_CHARS,
                max_vocabulary=limits.MAX_VOCABULARY,
                max_effort=MAX_EFFORT,
                max_dim=MAX_DIM,
            ),
            embedders=[
                pb.EmbedderInfo(name=n, dim=d, input_size=input_size(n))
                for n, d in sorted(embedder_names().items())
            ],
            joint_spaces=[pb.JointSpaceInfo(name=n, dim=d) for n, d in sorted(self.s.joints.dims().items())],
            index_kinds=[INDEX_ENUMS[k] for k in ("auto", "exact", "lsh", "hnsw")],
            api_keys_required=bool(cfg.api_keys),
            tls=bool(cfg.tls_cert),
            client_certificates_required=bool(cfg.tls_client_ca),
        )
