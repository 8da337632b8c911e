from __future__ import annotations

import math
from typing import NoReturn

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.errors import UnknownWord
from embedder.tags import dedupe
from embedder.text import TextSpace
from kernels import topk_inner_product
from server.errors import Error, fail, quote, rpc_method
from server.limits import MAX_VOCABULARY, check_count, check_word
from server.servicers.common import call_budget
from server.services import Services
from server.tracing import span
from server.wire import check_k

DEFAULT_JOINT = "conse:spacy"
# Candidates fetched per tag wanted, so that dropping later forms of a word still leaves k.
_OVERFETCH = 4


class TagServicer(pb_grpc.TagServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Tag(self, request: pb.TagRequest, context: grpc.ServicerContext) -> pb.TagResponse:
        k = check_k(request.k, self.s.config.max_k)
        min_score = request.min_score
        if math.isnan(min_score) or not 0 <= min_score <= 1:
            fail(Error.BAD_REQUEST, f"min_score must be in [0, 1] (0 sets no floor), got {min_score}")
        if request.mode not in pb.TagMode.values():
            fail(
                Error.BAD_REQUEST,
                f"mode {request.mode} is not a TagMode: use TAG_MODE_HIERARCHY (1) or _NEAREST_WORDS (2)",
            )
        joint = self.s.joint(request.joint or DEFAULT_JOINT)
        mode = request.mode or (
            pb.TAG_MODE_HIERARCHY if joint.name.startswith("conse:") else pb.TAG_MODE_NEAREST_WORDS
        )
        vocabulary = self._check_vocabulary(list(request.vocabulary))
        named = None
        if vocabulary and mode == pb.TAG_MODE_NEAREST_WORDS:
            named = self._encode(vocabulary, joint.text)
        elif vocabulary:
            # Any word either the hierarchy or the text encoder reads; the rest are typos or gibberish.
            tagger = self.s.joints.tagger()
            self._encode([w for w in vocabulary if not tagger.knows(w)], joint.text)
        b = call_budget(context, "embedding the image")
        images = self.s.image_embedder(joint.backbone)
        size = joint.input_size or images.default_size
        with span("embed"):
            features = images.embed([request.image], size=size, deadline=b.deadline, cancelled=b.cancelled)
        resp = pb.TagResponse(joint=joint.name, mode=mode)
        if mode == pb.TAG_MODE_HIERARCHY:
            tagger = self.s.joints.tagger()
            probs = self.s.joints.class_probabilities(features, joint.backbone)
            if vocabulary:
                resp.unscored.extend(w for w in vocabulary if not tagger.knows(w))
            tags = tagger.tags(probs, k, min_score=min_score, vocabulary=vocabulary or None)[0]
        else:
            tags = self._nearest(joint.project(features), joint.text.name, named, k, min_score)
        for word, score in tags:
            resp.tags.add(word=word, score=score, distance=max(0.0, 1.0 - score))
        return resp

    def _nearest(
        self,
        vec: np.ndarray,
        text_name: str,
        named: tuple[list[str], np.ndarray] | None,
        k: int,
        min_score: float,
    ) -> list[tuple[str, float]]:
        norm = float(np.linalg.norm(vec))
        vec = (vec / (norm or 1.0)).astype(np.float32)
        if named is None:
            names, index = self.s.vocabulary_index(text_name)
            scores, rows = index.search(vec, min(len(names), _OVERFETCH * k + 8))
        else:
            names, matrix = named
            scores, rows = topk_inner_product(matrix, vec, min(len(names), _OVERFETCH * k + 8))
        ranked = ((names[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True))
        return dedupe(((w, s) for w, s in ranked if not min_score or s >= min_score), k)

    @staticmethod
    def _check_vocabulary(vocabulary: list[str]) -> list[str]:
        if not vocabulary:
            return []
        check_count("vocabulary", len(vocabulary), MAX_VOCABULARY, "send the words you want to choose from")
        words = list(dict.fromkeys(w.strip().lower() for w in vocabulary))
        if "" in words:
            fail(Error.BAD_REQUEST, "vocabulary contains an empty word")
        for w in words:
            check_word(w)
        return words

    def _encode(self, words: list[str], text: TextSpace) -> tuple[list[str], np.ndarray]:
        if not words:
            return words, np.empty((0, text.dim), np.float32)
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
