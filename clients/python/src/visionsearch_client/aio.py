"""asyncio client (grpc.aio): the same calls as ``Client``, awaited."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from visionsearch_client import _convert as cv
from visionsearch_client._channel import PemSource, aio_channel, channel_options, credentials
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
from visionsearch_client.client import DEFAULT_MAX_MESSAGE


class AsyncClient:
    """``async with AsyncClient("localhost:50051") as c: await c.search(...)``."""

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
        """The same connection options as ``Client``."""
        self.timeout = timeout
        creds = credentials(tls, root_certificates, private_key, certificate_chain)
        opts = [*channel_options(max_message_bytes), *options]
        self._channel = aio_channel(target, opts, creds, api_key)
        self._server = pb_grpc.ServerServiceStub(self._channel)
        self._embed = pb_grpc.EmbedServiceStub(self._channel)
        self._search = pb_grpc.SearchServiceStub(self._channel)
        self._tag = pb_grpc.TagServiceStub(self._channel)
        self._collections = pb_grpc.CollectionServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as e:
            raise VisionSearchError.from_rpc_error(e) from None

    async def server_info(self, timeout: float | None = None) -> pb.GetServerInfoResponse:
        return await self._call(self._server.GetServerInfo, pb.GetServerInfoRequest(), timeout)

    async def healthy(self, service: str = "", timeout: float | None = None) -> bool:
        resp = await self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def embed_image(self, image: bytes, timeout: float | None = None) -> np.ndarray:
        return cv.from_vector(
            (await self._call(self._embed.Embed, pb.EmbedRequest(image=image), timeout)).vector
        )

    async def embed_word(self, word: str, timeout: float | None = None) -> np.ndarray:
        return cv.from_vector(
            (await self._call(self._embed.Embed, pb.EmbedRequest(word=word), timeout)).vector
        )

    async def search(
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
        hybrid: Hybrid | Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Hits:
        """Nearest items to one query: a vector, an image, a stored item's id, words or a sentence.
        ``space`` is "image" or "joint" (default: joint for words and sentences, image otherwise);
        the returned list's ``notes`` say what the server did with the query (e.g. skipped words).
        ``hybrid`` (text queries): payload field names, or ``Hybrid`` options, whose text BM25 scores and
        reciprocal rank fusion merges with the dense ranking."""
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
            hybrid=hybrid,
        )
        return cv.hits(await self._call(self._search.Search, req, timeout))

    async def nearest_words(self, word: str, k: int = 10, timeout: float | None = None) -> list[WordHit]:
        resp = await self._call(self._search.NearestWords, pb.NearestWordsRequest(word=word, k=k), timeout)
        return cv.word_hits(resp.hits)

    async def tag(
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
        return cv.tags(await self._call(self._tag.Tag, req, timeout))

    async def create_collection(
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
        timeout: float | None = None,
    ) -> CollectionInfo:
        """``hnsw_connectivity`` (M) and ``hnsw_expansion_add`` (ef_construction) shape the HNSW graph when
        the index is or becomes HNSW; 0 takes the server's defaults (16, 128)."""
        req = cv.create_request(
            name, dim, metric, embedder, joint, index, recall_target, hnsw_connectivity, hnsw_expansion_add
        )
        return cv.info(await self._call(self._collections.CreateCollection, req, timeout))

    async def get_collection(self, name: str, timeout: float | None = None) -> CollectionInfo:
        req = pb.GetCollectionRequest(name=name)
        return cv.info(await self._call(self._collections.GetCollection, req, timeout))

    async def update_collection(
        self, name: str, index: str, recall_target: float = 0.0, timeout: float | None = None
    ) -> CollectionInfo:
        """Change the index of an empty collection (a non-empty one answers FAILED_PRECONDITION)."""
        req = pb.UpdateCollectionRequest(name=name, index=cv.INDEXES[index], recall_target=recall_target)
        return cv.info(await self._call(self._collections.UpdateCollection, req, timeout))

    async def list_collections(self, timeout: float | None = None) -> list[CollectionInfo]:
        resp = await self._call(self._collections.ListCollections, pb.ListCollectionsRequest(), timeout)
        return [cv.info(c) for c in resp.collections]

    async def drop_collection(self, name: str, timeout: float | None = None) -> None:
        await self._call(self._collections.DropCollection, pb.DropCollectionRequest(name=name), timeout)

    async def upsert(self, collection: str, items: Iterable[Item], timeout: float | None = None) -> int:
        resp = await self._call(self._collections.Upsert, cv.upsert_request(collection, items), timeout)
        return int(resp.count)

    async def delete(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> int:
        req = pb.DeleteRequest(collection=collection, ids=list(ids))
        return int((await self._call(self._collections.Delete, req, timeout)).deleted)

    async def get_items(
        self, collection: str, ids: Sequence[str], with_vector: bool = False, timeout: float | None = None
    ) -> list[StoredItem]:
        req = pb.GetItemsRequest(collection=collection, ids=list(ids), with_vector=with_vector)
        return cv.stored_items(await self._call(self._collections.GetItems, req, timeout))

    async def count(self, collection: str, timeout: float | None = None) -> int:
        req = pb.CountRequest(collection=collection)
        return int((await self._call(self._collections.Count, req, timeout)).count)
