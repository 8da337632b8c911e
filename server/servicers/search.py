from __future__ import annotations

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.errors import UnknownWord
from embedder.image import input_size
from kernels import has_nonfinite
from server.errors import Error, fail, quote, rpc_method
from server.limits import MAX_SENTENCE_CHARS, MAX_WORDS, check_count, check_response_size, check_word
from server.servicers.common import call_budget
from server.services import Services
from server.storage import Collection
from server.storage.collection import Hit, payload_bytes
from server.tracing import span
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
        if request.space not in (pb.SPACE_UNSPECIFIED, pb.SPACE_IMAGE, pb.SPACE_JOINT):
            fail(
                Error.BAD_REQUEST,
                f"space {request.space} is not a known Space (IMAGE or JOINT; 0 for the default)",
            )
        c = self.s.store.get(request.collection)
        which = request.WhichOneof("query")
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
        exclude = request.id if which == "id" else None  # "more like this": not its own neighbour
        with span("embed" if which in ("image", "text") else "decode"):
            query = self._query(c, request, which, joint, notes, context)
        effort = min(request.effort, c.max_effort())
        with span("search"):
            hits = c.search(
                query, k + (exclude is not None), joint=joint, effort=effort, exact=request.exact
            )[0]
        if exclude is not None:
            hits = [h for h in hits if h.id != exclude][:k]
        with span("encode"):
            return self._response(c, request, hits, joint, notes)

    def _query(
        self,
        c: Collection,
        request: pb.SearchRequest,
        which: str | None,
        joint: bool,
        notes: list[str],
        context: grpc.ServicerContext,
    ) -> np.ndarray:
        if which == "vector":
            raw = vector_from_pb(request.vector, "query vector")[None, :]
            return (
                self._project(c, raw, context, "query vector")
                if joint
                else c.prepare_vectors(raw, "query vector")
            )
        if which == "image":
            features = self._embed_image(c, request.image, context)
            return (
                self._project(c, features, context, "query image") if joint else c.prepare_vectors(features)
            )
        if which == "id":
            return c.vector_of(request.id, joint=joint)[None, :]
        if which == "text":
            return self._text_query(c, request.text, notes)
        fail(Error.BAD_REQUEST, "SearchRequest has no query: set `vector`, `image`, `id` or `text`")

    def _response(
        self, c: Collection, request: pb.SearchRequest, hits: list[Hit], joint: bool, notes: list[str]
    ) -> pb.SearchResponse:
        cosine = joint or c.settings.metric == "cosine"
        check_response_size(
            len(hits),
            (c.settings.joint_dim if joint else c.settings.dim) * 4 if request.with_vector else 0,
            sum(payload_bytes(h.payload) for h in hits) if request.with_payload else 0,
            self.s.config.max_message_bytes,
            "ask for a smaller k" + (", or without vectors" if request.with_vector else ""),
        )
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
        return self.s.images.embed(
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
        if has_nonfinite(features):
            fail(Error.BAD_REQUEST, f"{what} contains NaN or Inf")
        return c.prepare_joint(self.s.joint(c.settings.joint).project(features))

    def _text_query(self, c: Collection, text: pb.TextQuery, notes: list[str]) -> np.ndarray:
        space = self.s.joint(c.settings.joint).text
        kind = text.WhichOneof("text")
        if kind == "sentence":
            if not text.sentence.strip():
                fail(Error.BAD_REQUEST, "sentence is empty")
            if len(text.sentence) > MAX_SENTENCE_CHARS:
                fail(
                    Error.BAD_REQUEST,
                    f"sentence has {len(text.sentence):,} characters, "
                    f"over the limit of {MAX_SENTENCE_CHARS:,}",
                )
            try:
                return c.prepare_joint(space.encode([text.sentence]))
            except UnknownWord:
                fail(Error.NOT_FOUND, f"no word of the sentence {quote(text.sentence)} is in the vocabulary")
        raw = text.words.words if kind == "words" else []
        check_count("the word list", len(raw), MAX_WORDS, "a query of that many words means nothing")
        words = [w.strip() for w in raw if w.strip()]
        for w in words:
            check_word(w)
        if not words:
            fail(Error.BAD_REQUEST, "the word list is empty: give at least one word")
        known = [w for w in words if space.known(w)]
        unknown = [w for w in words if not space.known(w)]
        if not known:
            fail(Error.NOT_FOUND, f"none of the words {quote(', '.join(words))} is in the vocabulary")
        if unknown:
            notes.append(f"skipped words not in the vocabulary: {quote(', '.join(unknown))}")
        # The seed's recipe for several words: the normalised mean of their unit vectors.
        return c.prepare_joint(space.encode(known).mean(axis=0, keepdims=True))

    @rpc_method
    def NearestWords(
        self, request: pb.NearestWordsRequest, context: grpc.ServicerContext
    ) -> pb.NearestWordsResponse:
        k = check_k(request.k, self.s.config.max_k)
        if not request.word.strip():
            fail(Error.BAD_REQUEST, "word is empty")
        check_word(request.word)
        vec = self.s.words.vector(request.word)
        resp = pb.NearestWordsResponse()
        for word, score in self.s.nearest_words(vec, k):
            resp.hits.add(word=word, score=score, distance=max(0.0, 1.0 - score))
        return resp
