"""The requests a run sends: inputs (vectors, images, words) gathered and encoded to bytes before the clock
starts, and a seeded sequence of kinds drawn from the mix."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from visionsearch.v1 import visionsearch_pb2 as pb
from visionsearch.v1 import visionsearch_pb2_grpc as pb_grpc

from visionsearch_client.loadtest.config import IMAGE_KINDS, KINDS, ConfigError, LoadConfig

TUXPAINT_STAMPS = Path("/usr/share/tuxpaint/stamps")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
# Common nouns known to the word vectors (and to ConSE's ImageNet classes, so word searches find something).
DEFAULT_WORDS: tuple[str, ...] = (
    "cat",
    "dog",
    "shirt",
    "shoe",
    "flower",
    "car",
    "bird",
    "horse",
    "tree",
    "house",
    "boat",
    "apple",
    "bag",
    "dress",
    "hat",
    "fish",
    "chair",
    "ball",
    "train",
    "guitar",
    "cake",
    "bear",
    "lion",
    "sandal",
)
DEFAULT_IMAGE_COUNT = 16
DEFAULT_VECTOR_COUNT = 64
# Length of the precomputed request plan; request i uses entry i % PLAN_LENGTH.
PLAN_LENGTH = 4096

METHODS = {
    "search_vector": "/visionsearch.v1.SearchService/Search",
    "search_image": "/visionsearch.v1.SearchService/Search",
    "search_word": "/visionsearch.v1.SearchService/Search",
    "tag": "/visionsearch.v1.TagService/Tag",
    "embed": "/visionsearch.v1.EmbedService/Embed",
    "upsert": "/visionsearch.v1.CollectionService/Upsert",
    "delete": "/visionsearch.v1.CollectionService/Delete",
}
# Ids the write kinds cycle through: upserts replace them, deletes remove them, later upserts bring them back.
WRITE_POOL = 1024


@dataclass(frozen=True)
class Planned:
    """One request ready to send: its kind's index in ``KINDS``, the RPC path and the serialized message."""

    kind: int
    method: str
    payload: bytes


def load_images(folder: str | Path | None, seed: int, count: int = DEFAULT_IMAGE_COUNT) -> list[bytes]:
    """Encoded images: every image under ``folder`` (recursively), or ``count`` Tux Paint stamp photos
    chosen with ``seed`` when ``folder`` is None."""
    if folder is None:
        if not TUXPAINT_STAMPS.is_dir():
            raise ConfigError(
                f"no images: {TUXPAINT_STAMPS} is missing (install tuxpaint-stamps-default) "
                "and --images was not given"
            )
        paths = sorted(TUXPAINT_STAMPS.rglob("*.png"))
        paths = random.Random(seed).sample(paths, min(count, len(paths)))
    else:
        root = Path(folder)
        if not root.is_dir():
            raise ConfigError(f"--images {root}: not a folder")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    images = [p.read_bytes() for p in paths]
    if not images:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder or TUXPAINT_STAMPS}")
    return images


def load_vectors_file(path: str | Path, dim: int) -> np.ndarray:
    """Query vectors from a .npy file of shape (n, dim) (or (dim,)), as little-endian float32."""
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read vectors from {path}: {e}") from None
    vectors = np.atleast_2d(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) == 0:
        raise ConfigError(f"vectors in {path} have shape {vectors.shape}; the collection needs (n, {dim})")
    if not np.isfinite(vectors).all():
        raise ConfigError(f"vectors in {path} contain NaN or Inf")
    return vectors.astype("<f4")


async def vectors_from_collection(
    channel: grpc.aio.Channel, collection: str, dim: int, seed: int, timeout: float
) -> np.ndarray:
    """Up to ``DEFAULT_VECTOR_COUNT`` stored vectors: the ids nearest a random vector, then GetItems."""
    search = pb_grpc.SearchServiceStub(channel)
    items = pb_grpc.CollectionServiceStub(channel)
    probe = np.random.default_rng(seed).standard_normal(dim).astype("<f4")
    resp = await search.Search(
        pb.SearchRequest(
            collection=collection, vector=pb.Vector(f32=probe.tobytes()), k=DEFAULT_VECTOR_COUNT
        ),
        timeout=timeout,
    )
    ids = [h.id for h in resp.hits]
    if not ids:
        raise ConfigError(f"collection {collection!r} is empty: give query vectors with --vectors FILE.npy")
    got = await items.GetItems(
        pb.GetItemsRequest(collection=collection, ids=ids, with_vector=True), timeout=timeout
    )
    vectors = [np.frombuffer(it.vector.f32, dtype="<f4") for it in got.items if it.vector.f32]
    if not vectors:
        raise ConfigError(f"collection {collection!r} returned no stored vectors: give --vectors FILE.npy")
    return np.stack(vectors)


def encode_requests(
    config: LoadConfig, vectors: np.ndarray | None, images: Sequence[bytes], words: Sequence[str]
) -> dict[str, list[bytes]]:
    """Every distinct request of each kind of the mix, serialized once."""
    c, k = config.collection, config.k
    out: dict[str, list[bytes]] = {}
    for kind in config.kinds:
        msgs: (
            list[pb.SearchRequest]
            | list[pb.TagRequest]
            | list[pb.EmbedRequest]
            | list[pb.UpsertRequest]
            | list[pb.DeleteRequest]
        )
        if kind == "upsert":
            assert vectors is not None
            vecs = [pb.Vector(f32=vectors[n % len(vectors)].tobytes()) for n in range(WRITE_POOL)]
            msgs = [
                pb.UpsertRequest(collection=c, items=[pb.Item(id=f"loadtest-{n}", vector=v)])
                for n, v in enumerate(vecs)
            ]
        elif kind == "delete":
            # Offset by half the pool, so a delete mostly finds an id that an upsert has (re)written.
            msgs = [
                pb.DeleteRequest(collection=c, ids=[f"loadtest-{(n + WRITE_POOL // 2) % WRITE_POOL}"])
                for n in range(WRITE_POOL)
            ]
        elif kind == "search_vector":
            assert vectors is not None
            msgs = [
                pb.SearchRequest(
                    collection=c, vector=pb.Vector(f32=v.tobytes()), k=k, with_payload=config.with_payload
                )
                for v in vectors
            ]
        elif kind == "search_image":
            msgs = [
                pb.SearchRequest(collection=c, image=im, k=k, with_payload=config.with_payload)
                for im in images
            ]
        elif kind == "search_word":
            msgs = [
                pb.SearchRequest(
                    collection=c,
                    text=pb.TextQuery(words=pb.Words(words=[w])),
                    k=k,
                    with_payload=config.with_payload,
                )
                for w in words
            ]
        elif kind == "tag":
            msgs = [pb.TagRequest(image=im, k=k) for im in images]
        else:  # embed: an image through the image embedder (the costly Embed)
            msgs = [pb.EmbedRequest(image=im) for im in images]
        out[kind] = [m.SerializeToString() for m in msgs]
    return out


def plan(config: LoadConfig, encoded: dict[str, list[bytes]], length: int = PLAN_LENGTH) -> list[Planned]:
    """``length`` requests whose kinds follow the mix (drawn with ``config.seed``), each kind cycling through
    its inputs."""
    rng = random.Random(config.seed)
    kinds = config.kinds
    drawn = rng.choices(kinds, weights=[config.mix[k] for k in kinds], k=length)
    missing = [k for k in kinds if k not in drawn]  # every kind of the mix appears, however small its weight
    for kind, at in zip(missing, rng.sample(range(length), len(missing)), strict=True):
        drawn[at] = kind
    cursor = dict.fromkeys(kinds, 0)
    out = []
    for kind in drawn:
        payloads = encoded[kind]
        out.append(Planned(KINDS.index(kind), METHODS[kind], payloads[cursor[kind] % len(payloads)]))
        cursor[kind] += 1
    return out


def needs_images(config: LoadConfig) -> bool:
    return any(k in IMAGE_KINDS for k in config.kinds)
