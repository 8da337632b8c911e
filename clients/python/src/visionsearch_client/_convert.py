"""Request building and response parsing shared by the sync and asyncio clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np
import numpy.typing as npt
from visionsearch.v1 import visionsearch_pb2 as pb

METRICS = {"cosine": pb.METRIC_COSINE, "inner_product": pb.METRIC_INNER_PRODUCT}
METRIC_NAMES = {v: k for k, v in METRICS.items()}
INDEXES = {"auto": pb.INDEX_AUTO, "exact": pb.INDEX_EXACT, "lsh": pb.INDEX_LSH, "hnsw": pb.INDEX_HNSW}
INDEX_NAMES = {v: k for k, v in INDEXES.items()}


class VisionSearchError(Exception):
    """A call the server refused: ``code`` is the gRPC status, ``details`` says what to fix."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, e: grpc.RpcError) -> VisionSearchError:
        return cls(e.code(), e.details() or "")


@dataclass(frozen=True)
class Item:
    """An item to upsert: give exactly one of ``vector`` and ``image`` (encoded bytes)."""

    id: str
    vector: npt.ArrayLike | None = None
    image: bytes | None = None
    payload: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StoredItem:
    id: str
    payload: dict[str, str]
    vector: np.ndarray | None


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    distance: float
    payload: dict[str, str]
    vector: np.ndarray | None


class Hits(list[Hit]):
    """Search hits, best first, plus ``notes``: what the server did with the query (e.g. skipped words)."""

    def __init__(self, hits: Iterable[Hit], notes: Iterable[str] = ()) -> None:
        super().__init__(hits)
        self.notes = list(notes)


@dataclass(frozen=True)
class WordHit:
    word: str
    score: float
    distance: float


class Tags(list[WordHit]):
    """Tags, best first, plus the ``mode`` used ("hierarchy" or "nearest_words") and ``unscored``: words of
    the vocabulary that the hierarchy cannot score."""

    def __init__(self, tags: Iterable[WordHit], mode: str = "", unscored: Iterable[str] = ()) -> None:
        super().__init__(tags)
        self.mode = mode
        self.unscored = list(unscored)


@dataclass(frozen=True)
class Hybrid:
    """Hybrid search options: BM25 over these payload fields, fused with the dense ranking by reciprocal rank
    fusion (``rrf_k`` 0 means 60; ``lexical_weight`` 0 means 1, the dense ranking's weight)."""

    text_fields: Sequence[str]
    rrf_k: int = 0
    lexical_weight: float = 0.0


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    metric: str
    embedder: str
    count: int
    joint: str = ""
    joint_dim: int = 0
    index: str = "auto"
    recall_target: float = 0.95
    index_in_use: str = ""
    hnsw_connectivity: int = 16
    hnsw_expansion_add: int = 128


def to_vector(v: npt.ArrayLike) -> pb.Vector:
    return pb.Vector(f32=np.ascontiguousarray(v, dtype="<f4").reshape(-1).tobytes())


def from_vector(v: pb.Vector) -> np.ndarray:
    return np.frombuffer(v.f32, dtype="<f4").astype(np.float32)


SPACES = {None: pb.SPACE_UNSPECIFIED, "image": pb.SPACE_IMAGE, "joint": pb.SPACE_JOINT}
TAG_MODES = {
    None: pb.TAG_MODE_UNSPECIFIED,
    "hierarchy": pb.TAG_MODE_HIERARCHY,
    "nearest_words": pb.TAG_MODE_NEAREST_WORDS,
}
TAG_MODE_NAMES = {v: k or "" for k, v in TAG_MODES.items()}


def search_request(
    collection: str,
    *,
    vector: npt.ArrayLike | None = None,
    image: bytes | None = None,
    id: str | None = None,
    words: Sequence[str] | None = None,
    sentence: str | None = None,
    k: int,
    with_payload: bool,
    with_vector: bool,
    space: str | None = None,
    exact: bool = False,
    effort: int = 0,
    hybrid: Hybrid | Sequence[str] | None = None,
) -> pb.SearchRequest:
    given = [x is not None for x in (vector, image, id, words, sentence)]
    if sum(given) != 1:
        raise ValueError("give exactly one of vector=, image=, id=, words= or sentence=")
    if space not in SPACES:
        raise ValueError("space must be None, 'image' or 'joint'")
    req = pb.SearchRequest(
        collection=collection,
        k=k,
        with_payload=with_payload,
        with_vector=with_vector,
        space=SPACES[space],
        exact=exact,
        effort=effort,
    )
    if vector is not None:
        req.vector.CopyFrom(to_vector(vector))
    elif image is not None:
        req.image = image
    elif words is not None:
        if isinstance(words, str):
            raise TypeError("words= takes a list of words; pass a single word as [word]")
        req.text.words.words.extend(words)
    elif sentence is not None:
        req.text.sentence = sentence
    else:
        req.id = id or ""
    if hybrid is not None:
        if isinstance(hybrid, str):
            raise TypeError("hybrid= takes a list of payload field names, e.g. ['label', 'caption']")
        opts = hybrid if isinstance(hybrid, Hybrid) else Hybrid(list(hybrid))
        req.hybrid.CopyFrom(
            pb.HybridOptions(
                text_fields=list(opts.text_fields), rrf_k=opts.rrf_k, lexical_weight=opts.lexical_weight
            )
        )
    return req


def upsert_request(collection: str, items: Iterable[Item]) -> pb.UpsertRequest:
    req = pb.UpsertRequest(collection=collection)
    for it in items:
        msg = req.items.add(id=it.id, payload=dict(it.payload))
        if (it.vector is None) == (it.image is None):
            raise ValueError(f"item {it.id!r}: give exactly one of vector= or image=")
        if it.vector is not None:
            msg.vector.CopyFrom(to_vector(it.vector))
        else:
            msg.image = it.image or b""
    return req


def create_request(
    name: str,
    dim: int,
    metric: str,
    embedder: str,
    joint: str,
    index: str,
    recall_target: float,
    hnsw_connectivity: int = 0,
    hnsw_expansion_add: int = 0,
) -> pb.CreateCollectionRequest:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}")
    if index not in INDEXES:
        raise ValueError(f"index must be one of {sorted(INDEXES)}")
    config = pb.CollectionConfig(
        name=name, dim=dim, metric=METRICS[metric], embedder=embedder, joint=joint,
        index=INDEXES[index], recall_target=recall_target,
        hnsw=pb.HnswConfig(connectivity=hnsw_connectivity, expansion_add=hnsw_expansion_add),
    )  # fmt: skip
    return pb.CreateCollectionRequest(config=config)


def tag_request(
    image: bytes,
    k: int,
    vocabulary: Sequence[str] | None,
    joint: str,
    min_score: float = 0.0,
    mode: str | None = None,
) -> pb.TagRequest:
    if mode not in TAG_MODES:
        raise ValueError("mode must be None, 'hierarchy' or 'nearest_words'")
    return pb.TagRequest(
        image=image,
        k=k,
        vocabulary=list(vocabulary or ()),
        joint=joint,
        min_score=min_score,
        mode=TAG_MODES[mode],
    )


def tags(resp: pb.TagResponse) -> Tags:
    return Tags(word_hits(resp.tags), TAG_MODE_NAMES.get(resp.mode, ""), resp.unscored)


def hits(resp: pb.SearchResponse) -> Hits:
    return Hits(
        [
            Hit(
                h.id,
                h.score,
                h.distance,
                dict(h.payload),
                from_vector(h.vector) if h.HasField("vector") else None,
            )
            for h in resp.hits
        ],
        resp.notes,
    )


def word_hits(items: Iterable[pb.WordHit]) -> list[WordHit]:
    return [WordHit(h.word, h.score, h.distance) for h in items]


def info(resp: pb.CollectionInfo) -> CollectionInfo:
    c = resp.config
    metric = METRIC_NAMES.get(c.metric, "unspecified")
    index = INDEX_NAMES.get(c.index, "auto")
    return CollectionInfo(
        c.name, c.dim, metric, c.embedder, resp.count, c.joint, resp.joint_dim, index, c.recall_target,
        resp.index_in_use, c.hnsw.connectivity, c.hnsw.expansion_add,
    )  # fmt: skip


def stored_items(resp: pb.GetItemsResponse) -> list[StoredItem]:
    return [
        StoredItem(i.id, dict(i.payload), from_vector(i.vector) if i.HasField("vector") else None)
        for i in resp.items
    ]
