from __future__ import annotations

from typing import NoReturn

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.errors import UnknownWord
from embedder.text import TextSpace
from kernels import topk_inner_product
from server.errors import Error, fail, quote, rpc_method
from server.limits import MAX_VOCABULARY, check_count, check_word
from server.servicers.common import call_budget
from server.services import Services
from server.tracing import span
from server.wire import check_k

DEFAULT_JOINT = "conse:spacy"


class TagServicer(pb_grpc.TagServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Tag(self, request: pb.TagRequest, context: grpc.ServicerContext) -> pb.TagResponse:
        k = check_k(request.k, self.s.config.max_k)
        joint = self.s.joint(request.joint or DEFAULT_JOINT)
        named = self._vocabulary(list(request.vocabulary), joint.text)
        b = call_budget(context, "embedding the image")
        size = joint.input_size or 224
        with span("embed"):
            vec = joint.project(
                self.s.images.embed([request.image], size=size, deadline=b.deadline, cancelled=b.cancelled)
            )
        norm = float(np.linalg.norm(vec))
        vec = (vec / (norm or 1.0)).astype(np.float32)
        if named is None:
            names, index = self.s.vocabulary_index(joint.text.name)
            scores, rows = index.search(vec, k)
        else:
            names, matrix = named
            scores, rows = topk_inner_product(matrix, vec, k)
        resp = pb.TagResponse(joint=joint.name)
        for s, r in zip(scores[0], rows[0], strict=True):
            resp.tags.add(word=names[r], score=float(s), distance=max(0.0, 1.0 - float(s)))
        return resp

    def _vocabulary(self, vocabulary: list[str], text: TextSpace) -> tuple[list[str], np.ndarray] | None:
        if not vocabulary:
            return None
        check_count("vocabulary", len(vocabulary), MAX_VOCABULARY, "send the words you want to choose from")
        words = list(dict.fromkeys(w.strip().lower() for w in vocabulary))
        if "" in words:
            fail(Error.BAD_REQUEST, "vocabulary contains an empty word")
        for w in words:
            check_word(w)
        unknown = [w for w in words if not text.known(w)]
        if unknown:
            self._unknown(unknown, text)
        try:
            return words, text.encode(words)
        except UnknownWord as e:
            # A word the table holds but the encoder cannot read (no letters it tokenises): same refusal.
            self._unknown([e.word], text)

    @staticmethod
    def _unknown(unknown: list[str], text: TextSpace) -> NoReturn:
        shown = quote(", ".join(unknown[:20]))
        fail(Error.BAD_REQUEST, f"vocabulary words not in the {text.name} vocabulary: {shown}; remove them")
