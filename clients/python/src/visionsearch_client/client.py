"""Blocking client."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from visionsearch_client import _convert as cv
from visionsearch_client._channel import PemSource, channel_options, credentials, sync_channel
from visionsearch_client._convert import (
    CollectionInfo,
    Hits,
    Hybrid,
    Item,
    StoredItem,
    Tags,
    VisionSearchError,
    WordHit,
)

T = TypeVar("T")

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024

__all__ = ["DEFAULT_MAX_MESSAGE", "Client", "channel_options"]


class Client:
    """``Client("localhost:50051")``; every call takes ``timeout=`` seconds (a gRPC deadline) and raises
    ``VisionSearchError`` with the server's status code and message on refusal.

    On a network: ``Client("search.internal:50051", api_key="vs_...", root_certificates=Path("ca.pem"))``.
    TLS is on when ``tls=True`` or any PEM is given (bytes or a path; without ``root_certificates`` the
    system's roots verify the server); ``private_key`` with ``certificate_chain`` is a client certificate for
    a server that requires one (mTLS). ``api_key`` is sent with every call as ``authorization: Bearer``."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE,
        api_key: str | None = None,
        tls: bool | None = None,
        root_certificates: PemSource = None,
        private_key: PemSource = None,
        certificate_chain: PemSource = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.timeout = timeout
        creds = credentials(tls, root_certificates, private_key, certificate_chain)
        opts = [*channel_options(max_message_bytes), *options]
        self._channel = sync_channel(target, opts, creds, api_key)
        self._server = pb_grpc.ServerServiceStub(self._channel)
        self._embed = pb_grpc.EmbedServiceStub(self._channel)
        self._search = pb_grpc.SearchServiceStub(self._channel)
        self._tag = pb_grpc.TagServiceStub(self._channel)
        self._collections = pb_grpc.CollectionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise VisionSearchError.from_rpc_error(e) from None

    # ---------------------------------------------------------------- health

    def server_info(self, timeout: float | None = None) -> pb.GetServerInfoResponse:
        """Version, limits, embedders, joint spaces and index kinds of the server (the proto message)."""
        return self._call(self._server.GetServerInfo, pb.GetServerInfoRequest(), timeout)

    def healthy(self, service: str = "", timeout: float | None = None) -> bool:
        resp = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    # ---------------------------------------------------------------- embed

    def embed_image(self, image: bytes, timeout: float | None = None) -> np.ndarray:
        return cv.from_vector(self._call(self._embed.Embed, pb.EmbedRequest(image=image), timeout).vector)

    def embed_word(self, word: str, timeout: float | None = None) -> np.ndarray:
        return cv.from_vector(self._call(self._embed.Embed, pb.EmbedRequest(word=word), timeout).vector)

    # ---------------------------------------------------------------- search

    def search(
        self,
        collection: str,
        *,
        vector: npt.ArrayLike | None = None,
        image: bytes | None = None,
        id: str | None = None,
        words: Sequence[str] | None = None,
        sentence: str | None = None,
        k: int = 10,
        space: str | None = None,
        exact: bool = False,
        effort: int = 0,
        with_payload: bool = True,
        with_vector: bool = False,
        filter: pb.Filter | None = None,
        score_threshold: float | None = None,
        hybrid: Hybrid | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Hits:
        """Nearest items to one query: a vector, an image, a stored item's id, words or a sentence.
        ``space`` is "image" or "joint" (default: joint for words and sentences, image otherwise);
        ``filter`` (see ``visionsearch_client.filters``) keeps only the items that pass; the returned list's
        ``notes`` say what the server did with the query (skipped words, the filter's plan). ``hybrid``
        (text queries): payload field names, or ``Hybrid`` options, whose text BM25 scores and reciprocal
        rank fusion merges with the dense ranking."""
        req = cv.search_request(
            collection,
            vector=vector,
            image=image,
            id=id,
            words=words,
            sentence=sentence,
            k=k,
            space=space,
            exact=exact,
            effort=effort,
            with_payload=with_payload,
            with_vector=with_vector,
            filter=filter,
            score_threshold=score_threshold,
            hybrid=hybrid,
        )
        return cv.hits(self._call(self._search.Search, req, timeout))

    def search_batch(
        self, collection: str, searches: Sequence[pb.SearchRequest], timeout: float | None = None
    ) -> list[Hits]:
        """Several searches in one call (build each with ``search_request(...)``); vector queries without a
        filter are answered together in one pass."""
        req = pb.SearchBatchRequest(collection=collection, searches=list(searches))
        return [cv.hits(r) for r in self._call(self._search.SearchBatch, req, timeout).results]

    def recommend(
        self,
        collection: str,
        *,
        positive: Sequence[str | npt.ArrayLike] = (),
        negative: Sequence[str | npt.ArrayLike] = (),
        k: int = 10,
        filter: pb.Filter | None = None,
        space: str | None = None,
        with_payload: bool = True,
        with_vector: bool = False,
        score_threshold: float | None = None,
        timeout: float | None = None,
    ) -> Hits:
        """Items like the ``positive`` examples and unlike the ``negative`` ones (ids or vectors)."""
        req = cv.recommend_request(
            collection, positive, negative, k, filter, space, with_payload, with_vector, score_threshold
        )
        return cv.hits(self._call(self._search.Recommend, req, timeout))

    def nearest_words(self, word: str, k: int = 10, timeout: float | None = None) -> list[WordHit]:
        resp = self._call(self._search.NearestWords, pb.NearestWordsRequest(word=word, k=k), timeout)
        return cv.word_hits(resp.hits)

    def tag(
        self,
        image: bytes,
        k: int = 10,
        vocabulary: Sequence[str] | None = None,
        joint: str = "",
        min_score: float = 0.0,
        mode: str | None = None,
        timeout: float | None = None,
    ) -> Tags:
        """Words describing an image: from ``vocabulary`` or the whole word list, in ``joint`` space
        (default conse:spacy). ``mode`` "hierarchy" (the default for ConSE spaces: the specific word and its
        WordNet hypernyms) or "nearest_words"; only tags scoring at least ``min_score`` come back."""
        req = cv.tag_request(image, k, vocabulary, joint, min_score, mode)
        return cv.tags(self._call(self._tag.Tag, req, timeout))

    # ---------------------------------------------------------------- collections

    def create_collection(
        self,
        name: str,
        dim: int = 0,
        metric: str = "cosine",
        embedder: str = "",
        joint: str = "",
        index: str = "auto",
        recall_target: float = 0.0,
        hnsw_connectivity: int = 0,
        hnsw_expansion_add: int = 0,
        payload_indexes: Mapping[str, str] | None = None,
        backend: str = "",
        vector_dtype: str = "",
        timeout: float | None = None,
    ) -> CollectionInfo:
        """``hnsw_connectivity`` (M) and ``hnsw_expansion_add`` (ef_construction) shape the HNSW graph when
        the index is or becomes HNSW; 0 takes the server's defaults (16, 128). ``payload_indexes`` maps
        payload keys to keyword, integer, float or bool: the fields filters may use. ``backend`` "milvus"
        keeps the items in the Milvus the server was started with (--milvus-uri). ``vector_dtype`` (f32, f16,
        i8) is how the HNSW graph stores its vectors; "" takes the server's default (f16 for index hnsw or
        auto, f32 otherwise)."""
        req = cv.create_request(
            name, dim, metric, embedder, joint, index, recall_target, hnsw_connectivity, hnsw_expansion_add,
            payload_indexes, backend, vector_dtype,
        )  # fmt: skip
        return cv.info(self._call(self._collections.CreateCollection, req, timeout))

    def get_collection(self, name: str, timeout: float | None = None) -> CollectionInfo:
        req = pb.GetCollectionRequest(name=name)
        return cv.info(self._call(self._collections.GetCollection, req, timeout))

    def update_collection(
        self,
        name: str,
        index: str | None = None,
        recall_target: float | None = None,
        *,
        payload_indexes: Mapping[str, str] | None = None,
        hnsw_connectivity: int | None = None,
        hnsw_expansion_add: int | None = None,
        timeout: float | None = None,
    ) -> CollectionInfo:
        """Change only the settings given (sent with a field mask). The index and HNSW settings change only
        while the collection is empty (FAILED_PRECONDITION otherwise)."""
        config = pb.CollectionConfig()
        paths = []
        if index is not None:
            config.index = cv.INDEXES[index]
            paths.append("index")
        if recall_target is not None:
            config.recall_target = recall_target
            paths.append("recall_target")
        if payload_indexes is not None:
            config.payload_indexes.extend(cv.payload_index_list(payload_indexes))
            paths.append("payload_indexes")
        if hnsw_connectivity is not None:
            config.hnsw.connectivity = hnsw_connectivity
            paths.append("hnsw.connectivity")
        if hnsw_expansion_add is not None:
            config.hnsw.expansion_add = hnsw_expansion_add
            paths.append("hnsw.expansion_add")
        req = pb.UpdateCollectionRequest(name=name, config=config, update_mask=FieldMask(paths=paths))
        return cv.info(self._call(self._collections.UpdateCollection, req, timeout))

    def list_collections(self, timeout: float | None = None) -> list[CollectionInfo]:
        resp = self._call(self._collections.ListCollections, pb.ListCollectionsRequest(), timeout)
        return [cv.info(c) for c in resp.collections]

    def drop_collection(self, name: str, timeout: float | None = None) -> None:
        self._call(self._collections.DropCollection, pb.DropCollectionRequest(name=name), timeout)

    def upsert(self, collection: str, items: Iterable[Item], timeout: float | None = None) -> int:
        """Insert or replace items; returns the collection's count after the call."""
        return int(self._call(self._collections.Upsert, cv.upsert_request(collection, items), timeout).count)

    def delete(
        self,
        collection: str,
        ids: Sequence[str] = (),
        *,
        filter: pb.Filter | None = None,
        timeout: float | None = None,
    ) -> int:
        """Delete items by id, or every item that passes ``filter``; returns how many were deleted."""
        req = pb.DeleteRequest(collection=collection, ids=list(ids), filter=filter)
        return int(self._call(self._collections.Delete, req, timeout).deleted)

    def scroll(
        self,
        collection: str,
        *,
        filter: pb.Filter | None = None,
        page: int = 100,
        with_vector: bool = False,
        with_payload: bool = True,
        timeout: float | None = None,
    ) -> Iterator[StoredItem]:
        """Every item (that passes ``filter``) in id order, ``page`` per call. An item present for the whole
        walk comes exactly once; items written meanwhile may or may not."""
        cursor = ""
        while True:
            req = pb.ScrollRequest(
                collection=collection, limit=page, cursor=cursor, filter=filter, with_vector=with_vector,
                without_payload=not with_payload,
            )  # fmt: skip
            resp = self._call(self._collections.Scroll, req, timeout)
            yield from cv.stored_items(resp)
            if not resp.next_cursor:
                return
            cursor = resp.next_cursor

    def set_payload(
        self, collection: str, ids: Sequence[str], payload: Mapping[str, Any], timeout: float | None = None
    ) -> int:
        """Set these payload keys of the items (their other keys stay); returns how many items changed."""
        strings, typed = cv.split_payload(payload)
        req = pb.SetPayloadRequest(collection=collection, ids=list(ids), payload=strings, fields=typed)
        return int(self._call(self._collections.SetPayload, req, timeout).updated)

    def delete_payload_keys(
        self, collection: str, ids: Sequence[str], keys: Sequence[str], timeout: float | None = None
    ) -> int:
        req = pb.DeletePayloadKeysRequest(collection=collection, ids=list(ids), keys=list(keys))
        return int(self._call(self._collections.DeletePayloadKeys, req, timeout).updated)

    def get_items(
        self, collection: str, ids: Sequence[str], with_vector: bool = False, timeout: float | None = None
    ) -> list[StoredItem]:
        req = pb.GetItemsRequest(collection=collection, ids=list(ids), with_vector=with_vector)
        return cv.stored_items(self._call(self._collections.GetItems, req, timeout))

    def count(self, collection: str, *, filter: pb.Filter | None = None, timeout: float | None = None) -> int:
        req = pb.CountRequest(collection=collection, filter=filter)
        return int(self._call(self._collections.Count, req, timeout).count)
