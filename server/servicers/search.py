from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from embedder.errors import UnknownWord
from embedder.image import input_size
from kernels import has_nonfinite
from server.errors import Error, fail, quote, rpc_method
from server.filters import split_payload
from server.hybrid import HybridOptions, check_options, depth, fuse
from server.limits import (
    MAX_BATCH_SEARCHES,
    MAX_IDS,
    MAX_SENTENCE_CHARS,
    MAX_WORDS,
    check_count,
    check_response_size,
    check_word,
)
from server.servicers.common import call_budget, request_filter
from server.services import Services
from server.storage import AnyCollection, Collection
from server.storage.collection import Hit, payload_bytes
from server.tracing import span
from server.wire import MAX_EFFORT, check_k, vector_from_pb, vector_to_pb


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, services: Services) -> None:
        self.s = services

    @rpc_method
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        c = self.s.store.get(request.collection)
        return self._search(c, request, context)

    @rpc_method
    def SearchBatch(
        self, request: pb.SearchBatchRequest, context: grpc.ServicerContext
    ) -> pb.SearchBatchResponse:
        c = self.s.store.get(request.collection)
        searches = request.searches
        if not searches:
            fail(Error.BAD_REQUEST, "SearchBatchRequest has no searches")
        check_count(
            "SearchBatchRequest.searches", len(searches), MAX_BATCH_SEARCHES, "split it into several calls"
        )
        results: list[pb.SearchResponse | None] = [None] * len(searches)
        # Plain vector queries of one kind are answered together: one pass of the batched kernel or index.
        groups: dict[tuple[bool, bool, int], list[tuple[int, np.ndarray, int]]] = {}
        for n, s in enumerate(searches):
            if s.collection and s.collection != request.collection:
                fail(
                    Error.BAD_REQUEST,
                    f"searches[{n}] names collection {quote(s.collection, 64)}; a batch searches "
                    f"{request.collection!r} only (leave it empty)",
                )
            k, joint, which = self._check(c, s, f"searches[{n}]")
            if which == "vector" and not s.HasField("filter"):
                query = self._query(c, s, which, joint, [], context)
                groups.setdefault((joint, s.exact, min(s.effort, c.max_effort())), []).append((n, query, k))
            else:
                results[n] = self._search(c, s, context)
        for (joint, exact, effort), members in groups.items():
            queries = np.concatenate([q for _, q, _ in members])
            with span("search"):
                found = c.search(
                    queries, max(k for _, _, k in members), joint=joint, effort=effort, exact=exact
                )
            for (n, _, k), hits in zip(members, found, strict=True):
                results[n] = self._response(
                    c, searches[n], self._finish(hits, k, None, searches[n]), joint, []
                )
        done = [r for r in results if r is not None]
        check_response_size(
            sum(len(r.hits) for r in done), 0, sum(r.ByteSize() for r in done),
            self.s.config.max_message_bytes, "send fewer searches per batch, a smaller k, or no vectors",
        )  # fmt: skip
        return pb.SearchBatchResponse(results=done)

    @rpc_method
    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        c = self.s.store.get(request.collection)
        k = check_k(request.k, self.s.config.max_k)
        joint = self._space(c, request.space, "vector") == pb.SPACE_JOINT
        examples = [*request.positive_ids, *request.negative_ids]
        check_count("RecommendRequest ids", len(examples), MAX_IDS, "give fewer examples")
        check_count(
            "RecommendRequest vectors", len(request.positive_vectors) + len(request.negative_vectors),
            MAX_IDS, "give fewer examples",
        )  # fmt: skip

        def side(ids: Any, vectors: Any, what: str) -> list[np.ndarray]:
            out = [c.vector_of(i, joint=joint) for i in ids]
            for v in vectors:
                raw = vector_from_pb(v, f"a {what} vector")[None, :]
                out.append(self._as_query(c, raw, joint, context, f"a {what} vector")[0])
            return out

        with span("decode"):
            positive = side(request.positive_ids, request.positive_vectors, "positive")
            negative = side(request.negative_ids, request.negative_vectors, "negative")
        if not positive:
            fail(
                Error.BAD_REQUEST,
                "RecommendRequest has no positive example: give positive_ids or positive_vectors",
            )
        mean_pos = np.mean(positive, axis=0)
        target = 2 * mean_pos - np.mean(negative, axis=0) if negative else mean_pos
        if not np.any(np.abs(target) > 1e-6):
            fail(Error.BAD_REQUEST, "the positive and negative examples cancel out: give other examples")
        query = self._as_query(c, target[None, :].astype(np.float32), joint, context, "the recommendation")
        notes: list[str] = []
        where = request_filter(c, request)
        skip = set(examples)
        with span("search"):
            hits = c.search(query, k + len(skip), joint=joint, filter=where, notes=notes)[0]
        hits = [h for h in hits if h.id not in skip]
        if request.HasField("score_threshold"):
            hits = [h for h in hits if h.score >= request.score_threshold]
        with span("encode"):
            return self._response(c, request, hits[:k], joint, notes)

    # ---------------------------------------------------------------- one search

    def _space(self, c: AnyCollection, space: int, which: str | None) -> int:
        if space not in (pb.SPACE_UNSPECIFIED, pb.SPACE_IMAGE, pb.SPACE_JOINT):
            fail(Error.BAD_REQUEST, f"space {space} is not a known Space (IMAGE or JOINT; 0 for the default)")
        if which == "text" and space == pb.SPACE_IMAGE:
            fail(Error.BAD_REQUEST, "text queries search the joint space; leave `space` unset or SPACE_JOINT")
        if space == pb.SPACE_JOINT or (which == "text" and space == pb.SPACE_UNSPECIFIED):
            if not c.settings.joint:
                fail(
                    Error.PRECONDITION,
                    f"collection {c.name!r} has no joint image-word space: create it with `joint` set "
                    "(e.g. conse:spacy) to search it with words or in SPACE_JOINT",
                )
            return pb.SPACE_JOINT
        return pb.SPACE_IMAGE

    def _check(
        self, c: AnyCollection, request: pb.SearchRequest, where: str = ""
    ) -> tuple[int, bool, str | None]:
        at = f"{where}: " if where else ""
        k = check_k(request.k, self.s.config.max_k)
        if not 0 <= request.effort <= MAX_EFFORT:
            fail(
                Error.BAD_REQUEST,
                f"{at}effort must be between 0 (the tuned setting) and {MAX_EFFORT}, got {request.effort}",
            )
        which = request.WhichOneof("query")
        joint = self._space(c, request.space, which) == pb.SPACE_JOINT
        if request.HasField("hybrid") and which != "text":
            fail(
                Error.BAD_REQUEST,
                f"{at}hybrid needs a text query: send `text` (words or a sentence) with it, or drop `hybrid`",
            )
        if which is None:
            fail(Error.BAD_REQUEST, f"{at}SearchRequest has no query: set `vector`, `image`, `id` or `text`")
        return k, joint, which

    def _search(
        self, c: AnyCollection, request: pb.SearchRequest, context: grpc.ServicerContext
    ) -> pb.SearchResponse:
        k, joint, which = self._check(c, request)
        hybrid: HybridOptions | None = None
        if request.HasField("hybrid"):
            opts = request.hybrid
            hybrid = check_options(list(opts.text_fields), opts.rrf_k, opts.lexical_weight)
            if not isinstance(c, Collection):
                fail(
                    Error.PRECONDITION,
                    f"hybrid search scores payload text this server holds: collection {c.name!r} is kept in "
                    "Milvus; search it without `hybrid`, or keep the collection on the local backend",
                )
        notes: list[str] = []
        exclude = request.id if which == "id" else None  # "more like this": not its own neighbour
        with span("embed" if which in ("image", "text") else "decode"):
            query = self._query(c, request, which, joint, notes, context)
        where = request_filter(c, request)
        effort = min(request.effort, c.max_effort())
        with span("search"):
            wanted = depth(k) if hybrid else k + (exclude is not None)
            hits = c.search(
                query, wanted, joint=joint, effort=effort, exact=request.exact, filter=where, notes=notes
            )[0]
            if hybrid is not None and isinstance(c, Collection):
                entry = self.s.lexical.get(c, hybrid.fields)
                allowed = c.filter_rows(where) if where is not None else None
                hits = fuse(hits, entry, _query_text(request.text), hybrid, depth(k), c, allowed)
        with span("encode"):
            return self._response(c, request, self._finish(hits, k, exclude, request), joint, notes)

    @staticmethod
    def _finish(hits: list[Hit], k: int, exclude: str | None, request: pb.SearchRequest) -> list[Hit]:
        if exclude is not None:
            hits = [h for h in hits if h.id != exclude]
        if request.HasField("score_threshold"):
            hits = [h for h in hits if h.score >= request.score_threshold]
        return hits[:k]

    def _query(
        self,
        c: AnyCollection,
        request: pb.SearchRequest,
        which: str | None,
        joint: bool,
        notes: list[str],
        context: grpc.ServicerContext,
    ) -> np.ndarray:
        if which == "vector":
            raw = vector_from_pb(request.vector, "query vector")[None, :]
            return self._as_query(c, raw, joint, context, "query vector")
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

    def _as_query(
        self, c: AnyCollection, raw: np.ndarray, joint: bool, context: grpc.ServicerContext, what: str
    ) -> np.ndarray:
        """A vector as a query of the space searched: the joint space takes its own width, or image
        features (projected, as images are)."""
        if not joint:
            return c.prepare_vectors(raw, what)
        if raw.shape[1] == c.settings.joint_dim:
            return c.prepare_joint(raw, what)
        if raw.shape[1] != c.settings.dim:
            fail(
                Error.BAD_REQUEST,
                f"{what} has dimension {raw.shape[1]}: the joint space takes {c.settings.joint_dim}-d "
                f"vectors (or {c.settings.dim}-d image features, which it projects)",
            )
        return self._project(c, raw, context, what)

    def _response(
        self, c: AnyCollection, request: Any, hits: list[Hit], joint: bool, notes: list[str]
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
                strings, typed = split_payload(h.payload)
                hit.payload.update(strings)
                for key, value in typed.items():
                    hit.fields[key].CopyFrom(value)
            if request.with_vector:
                hit.vector.CopyFrom(vector_to_pb(c.hit_vector(h, joint=joint)))
        return resp

    def _embed_image(self, c: AnyCollection, image: bytes, context: grpc.ServicerContext) -> np.ndarray:
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
        self, c: AnyCollection, features: np.ndarray, context: grpc.ServicerContext, what: str
    ) -> np.ndarray:
        if features.shape[1] != c.settings.dim:
            fail(
                Error.BAD_REQUEST,
                f"{what} has dimension {features.shape[1]}, the image space {c.settings.dim}",
            )
        if has_nonfinite(features):
            fail(Error.BAD_REQUEST, f"{what} contains NaN or Inf")
        return c.prepare_joint(self.s.joint(c.settings.joint, c.settings.embedder).project(features))

    def _text_query(self, c: AnyCollection, text: pb.TextQuery, notes: list[str]) -> np.ndarray:
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


def _query_text(text: pb.TextQuery) -> str:
    return text.sentence if text.WhichOneof("text") == "sentence" else " ".join(text.words.words)
