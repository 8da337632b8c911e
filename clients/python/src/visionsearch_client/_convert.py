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
        details = e.details() or ""
        low = details.lower()
        if e.code() == grpc.StatusCode.UNAVAILABLE and any(w in low for w in _TLS_WORDS):
            details += (
                " (the TLS handshake failed: check that the server's certificate is valid for this address "
                "and signed by a CA in root_certificates, and, if the server requires client certificates, "
                "pass private_key and certificate_chain)"
            )
        return cls(e.code(), details)


_TLS_WORDS = ("handshake", "ssl", "tls", "certificate", "verification")


@dataclass(frozen=True)
class Item:
    """An item to upsert: give exactly one of ``vector`` and ``image`` (encoded bytes)."""

    id: str
    vector: npt.ArrayLike | None = None
    image: bytes | None = None
    # Strings travel in the proto's `payload` map; ints, floats, bools and lists as typed `fields`.
    payload: Mapping[str, PayloadValue] = field(default_factory=dict)


PayloadValue = str | int | float | bool | list[str] | list[int]


@dataclass(frozen=True)
class StoredItem:
    id: str
    payload: dict[str, PayloadValue]
    vector: np.ndarray | None


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    distance: float
    payload: dict[str, PayloadValue]
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
    # "ready", or "damaged" (not served: every call on it fails with DATA_LOSS; ``state_reason`` says why).
    state: str = "ready"
    state_reason: str = ""
    payload_indexes: dict[str, str] = field(default_factory=dict)  # key -> keyword|integer|float|bool
    filter_planning: str = ""
    backend: str = "local"
    vector_dtype: str = "f32"


def to_value(v: PayloadValue) -> pb.PayloadValue:
    if isinstance(v, bool):
        return pb.PayloadValue(boolean=v)
    if isinstance(v, int):
        return pb.PayloadValue(integer=v)
    if isinstance(v, float):
        return pb.PayloadValue(number=v)
    if isinstance(v, str):
        return pb.PayloadValue(text=v)
    values = list(v)
    if values and all(isinstance(x, int) and not isinstance(x, bool) for x in values):
        return pb.PayloadValue(integers=pb.IntList(values=values))  # type: ignore[arg-type]
    return pb.PayloadValue(texts=pb.StringList(values=[str(x) for x in values]))


def from_value(v: pb.PayloadValue) -> PayloadValue:
    kind = v.WhichOneof("kind")
    if kind == "texts":
        return list(v.texts.values)
    if kind == "integers":
        return list(v.integers.values)
    return getattr(v, kind) if kind else ""


def split_payload(payload: Mapping[str, PayloadValue]) -> tuple[dict[str, str], dict[str, pb.PayloadValue]]:
    strings = {k: v for k, v in payload.items() if isinstance(v, str)}
    return strings, {k: to_value(v) for k, v in payload.items() if not isinstance(v, str)}


def merged_payload(
    strings: Mapping[str, str], fields: Mapping[str, pb.PayloadValue]
) -> dict[str, PayloadValue]:
    return {**strings, **{k: from_value(v) for k, v in fields.items()}}


def to_vector(v: npt.ArrayLike) -> pb.Vector:
    return pb.Vector(f32=np.ascontiguousarray(v, dtype="<f4").reshape(-1).tobytes())


def from_vector(v: pb.Vector) -> np.ndarray:
    return np.frombuffer(v.f32, dtype="<f4").astype(np.float32)


STATES = {pb.COLLECTION_STATE_READY: "ready", pb.COLLECTION_STATE_DAMAGED: "damaged"}
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
    filter: pb.Filter | None = None,
    score_threshold: float | None = None,
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
    if filter is not None:
        req.filter.CopyFrom(filter)
    if score_threshold is not None:
        req.score_threshold = score_threshold
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
        strings, typed = split_payload(it.payload)
        msg = req.items.add(id=it.id, payload=strings, fields=typed)
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
    payload_indexes: Mapping[str, str] | None = None,
    backend: str = "",
    vector_dtype: str = "",
) -> pb.CreateCollectionRequest:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}")
    if index not in INDEXES:
        raise ValueError(f"index must be one of {sorted(INDEXES)}")
    config = pb.CollectionConfig(
        name=name, dim=dim, metric=METRICS[metric], embedder=embedder, joint=joint,
        index=INDEXES[index], recall_target=recall_target,
        hnsw=pb.HnswConfig(connectivity=hnsw_connectivity, expansion_add=hnsw_expansion_add),
        payload_indexes=payload_index_list(payload_indexes), backend=backend, vector_dtype=vector_dtype,
    )  # fmt: skip
    return pb.CreateCollectionRequest(config=config)


PAYLOAD_TYPES = {
    "keyword": pb.PAYLOAD_TYPE_KEYWORD,
    "integer": pb.PAYLOAD_TYPE_INTEGER,
    "float": pb.PAYLOAD_TYPE_FLOAT,
    "bool": pb.PAYLOAD_TYPE_BOOL,
}


PAYLOAD_TYPE_NAMES = {v: k for k, v in PAYLOAD_TYPES.items()}


def payload_index_list(indexes: Mapping[str, str] | None) -> list[pb.PayloadIndex]:
    out = []
    for key, kind in (indexes or {}).items():
        if kind not in PAYLOAD_TYPES:
            raise ValueError(f"payload index {key!r}: type must be one of {sorted(PAYLOAD_TYPES)}")
        out.append(pb.PayloadIndex(key=key, type=PAYLOAD_TYPES[kind]))
    return out


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
                merged_payload(h.payload, h.fields),
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
        STATES.get(resp.state, "ready"), resp.state_reason,
        {p.key: PAYLOAD_TYPE_NAMES.get(p.type, "?") for p in c.payload_indexes}, resp.filter_planning,
        c.backend or "local", c.vector_dtype or "f32",
    )  # fmt: skip


def stored_items(resp: pb.GetItemsResponse) -> list[StoredItem]:
    return [
        StoredItem(
            i.id, merged_payload(i.payload, i.fields), from_vector(i.vector) if i.HasField("vector") else None
        )
        for i in resp.items
    ]


def recommend_request(
    collection: str,
    positive: Sequence[str | npt.ArrayLike],
    negative: Sequence[str | npt.ArrayLike],
    k: int,
    filter: pb.Filter | None,
    space: str | None,
    with_payload: bool,
    with_vector: bool,
    score_threshold: float | None,
) -> pb.RecommendRequest:
    if space not in SPACES:
        raise ValueError("space must be None, 'image' or 'joint'")
    req = pb.RecommendRequest(
        collection=collection, k=k, space=SPACES[space], with_payload=with_payload, with_vector=with_vector,
        filter=filter,
    )  # fmt: skip
    for examples, ids, vectors in (
        (positive, req.positive_ids, req.positive_vectors),
        (negative, req.negative_ids, req.negative_vectors),
    ):
        for e in examples:
            if isinstance(e, str):
                ids.append(e)
            else:
                vectors.append(to_vector(e))
    if score_threshold is not None:
        req.score_threshold = score_threshold
    return req
