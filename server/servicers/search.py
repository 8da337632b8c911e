from __future__ import annotations

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.errors import UnknownWord
from embedder.image import input_size
from server.errors import Error, fail, rpc_method
from server.hybrid import check_options, depth, fuse
from server.servicers.common import call_budget
from server.services import Services
from server.storage import Collection
from server.wire import MAX_EFFORT, check_k, vector_from_pb, vector_to_pb


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        k = check_k(request.k, self.s.config.max_k)
        if not 0 <= request.effort <= MAX_EFFORT:
            fail(
                Error.BAD_REQUEST,
                f"effort must be between 0 (the tuned setting) and {MAX_EFFORT}, got {request.effort}",
            )
        which = request.WhichOneof("query")
        hybrid = None
        if request.HasField("hybrid"):
            if which != "text":
                fail(
                    Error.BAD_REQUEST,
                    "hybrid needs a text query: send `text` (words or a sentence) with it, or drop `hybrid`",
                )
            opts = request.hybrid
            hybrid = check_options(list(opts.text_fields), opts.rrf_k, opts.lexical_weight)
        c = self.s.store.get(request.collection)
        joint = request.space == pb.SPACE_JOINT or (which == "text" and request.space == pb.SPACE_UNSPECIFIED)
        if which == "text" and request.space == pb.SPACE_IMAGE:
            fail(Error.BAD_REQUEST, "text queries search the joint space; leave `space` unset or SPACE_JOINT")
        if joint and not c.settings.joint:
            fail(
                Error.PRECONDITION,
                f"collection {c.name!r} has no joint image-word space: create it with `joint` set "
                "(e.g. conse:spacy) to search it with words or in SPACE_JOINT",
            )
        notes: list[str] = []
        exclude = None
        if which == "vector":
            raw = vector_from_pb(request.vector, "query vector")[None, :]
            query = (
                self._project(c, raw, context, "query vector")
                if joint
                else c.prepare_vectors(raw, "query vector")
            )
        elif which == "image":
            features = self._embed_image(c, request.image, context)
            query = (
                self._project(c, features, context, "query image") if joint else c.prepare_vectors(features)
            )
        elif which == "id":
            # "More like this": the item itself is not one of its own neighbours.
            query = c.vector_of(request.id, joint=joint)[None, :]
            exclude = request.id
        elif which == "text":
            query = self._text_query(c, request.text, notes)
        else:
            fail(Error.BAD_REQUEST, "SearchRequest has no query: set `vector`, `image`, `id` or `text`")
        effort = min(request.effort, c.max_effort())
        wanted = depth(k) if hybrid else k + (exclude is not None)
        hits = c.search(query, wanted, joint=joint, effort=effort, exact=request.exact)[0]
        if exclude is not None:
            hits = [h for h in hits if h.id != exclude][:k]
        if hybrid is not None:
            hits = fuse(hits, self.s.lexical.get(c, hybrid.fields), _query_text(request.text), hybrid, k)
        cosine = joint or c.settings.metric == "cosine"
        resp = pb.SearchResponse(notes=notes)
        for h in hits:
            hit = resp.hits.add(id=h.id, score=h.score, distance=1.0 - h.score if cosine else -h.score)
            if request.with_payload:
                hit.payload.update(h.payload)
            if request.with_vector:
                vec = c.vector_of(h.id, joint=joint) if joint else c.vector_of_row(h.row)
                hit.vector.CopyFrom(vector_to_pb(vec))
        return resp

    def _embed_image(self, c: Collection, image: bytes, context: grpc.ServicerContext) -> np.ndarray:
        if not c.settings.embedder:
            fail(
                Error.PRECONDITION,
                f"collection {c.name!r} has no image embedder: query it with a vector or an item id",
            )
        b = call_budget(context, "embedding the query image")
        return self.s.image_embedder(c.settings.embedder).embed(
            [image], size=input_size(c.settings.embedder), deadline=b.deadline, cancelled=b.cancelled
        )

    def _project(
        self, c: Collection, features: np.ndarray, context: grpc.ServicerContext, what: str
    ) -> np.ndarray:
        if features.shape[1] != c.settings.dim:
            fail(
                Error.BAD_REQUEST,
                f"{what} has dimension {features.shape[1]}, the image space {c.settings.dim}",
            )
        return c.prepare_joint(self.s.joint(c.settings.joint, c.settings.embedder).project(features))

    def _text_query(self, c: Collection, text: pb.TextQuery, notes: list[str]) -> np.ndarray:
        space = self.s.joint(c.settings.joint).text
        kind = text.WhichOneof("text")
        if kind == "sentence":
            if not text.sentence.strip():
                fail(Error.BAD_REQUEST, "sentence is empty")
            try:
                return c.prepare_joint(space.encode([text.sentence]))
            except UnknownWord:
                fail(Error.NOT_FOUND, f"no word of the sentence {text.sentence!r} is in the vocabulary")
        words = [w.strip() for w in text.words.words if w.strip()] if kind == "words" else []
        if not words:
            fail(Error.BAD_REQUEST, "the word list is empty: give at least one word")
        known = [w for w in words if space.known(w)]
        unknown = [w for w in words if not space.known(w)]
        if not known:
            fail(Error.NOT_FOUND, f"none of the words {words} is in the vocabulary")
        if unknown:
            notes.append(f"skipped words not in the vocabulary: {', '.join(unknown)}")
        # The seed's recipe for several words: the normalised mean of their unit vectors.
        return c.prepare_joint(space.encode(known).mean(axis=0, keepdims=True))

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


def _query_text(text: pb.TextQuery) -> str:
    return text.sentence if text.WhichOneof("text") == "sentence" else " ".join(text.words.words)
