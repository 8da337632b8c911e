"""The objects the servicers share: configuration, collections, embedders, joint spaces and word indexes."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedder.backbones import backbone_of
from embedder.image import ImageEmbedder, embedder_names
from embedder.joint import JointRegistry, JointSpace
from embedder.naming import unknown_joint
from embedder.words import WordVectors
from kernels import ExactIndex, l2_normalize
from server.aio import INLINE_SCAN
from server.config import Config
from server.cursors import Cursors
from server.errors import Error, fail
from server.health import CollectionHealth
from server.hybrid import LexicalIndexes
from server.storage import CollectionStore
from server.storage.milvus import MilvusBackend

log = logging.getLogger("visionsearch.services")


@dataclass
class Services:
    config: Config
    store: CollectionStore
    images: ImageEmbedder
    words: WordVectors
    word_index: ExactIndex
    joints: JointRegistry
    _embedders: dict[str, ImageEmbedder] = field(default_factory=dict)
    _embedders_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set by create_server once the health service exists.
    collection_health: CollectionHealth | None = None
    cursors: Cursors = field(init=False)
    lexical: LexicalIndexes = field(default_factory=LexicalIndexes)
    _vocab_indexes: dict[str, tuple[list[str], ExactIndex]] = field(default_factory=dict)
    _vocab_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.cursors = Cursors(self.config.data_dir)

    @classmethod
    def start(cls, config: Config) -> Services:
        t0 = time.perf_counter()
        images = _image_embedder(config, config.backbone)
        words = WordVectors()
        word_index = ExactIndex(words.dim, capacity=len(words.words))
        word_index.add(l2_normalize(words.vocabulary_matrix()))
        joints = JointRegistry(
            images, words, cache_dir=config.data_dir / "cache", threads=config.torch_threads
        )
        store = open_store(config, images, joints)
        log.info("models and collections loaded in %.1fs", time.perf_counter() - t0)
        return cls(config, store, images, words, word_index, joints)

    def with_store(self, config: Config) -> Services:
        """The same models over another data folder (tests run several servers on one set of models)."""
        return Services(config, open_store(config, self.images, self.joints), self.images, self.words,
                        self.word_index, self.joints)  # fmt: skip

    def nearest_words(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        scores, rows = self.word_index.search(l2_normalize(vector[None, :]), k)
        return [(self.words.words[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True)]

    def image_embedder(self, embedder: str) -> ImageEmbedder:
        """The image embedder an embedder name needs ("efficientnet_lite1", "mobilenet_v2@96"): the server's
        own for its backbone, another started on first use (its own worker processes)."""
        backbone = backbone_of(embedder).name
        if backbone == self.images.model_name:
            return self.images
        with self._embedders_lock:
            if backbone not in self._embedders:
                log.info("starting the %s image embedder", backbone)
                self._embedders[backbone] = _image_embedder(self.config, backbone)
            return self._embedders[backbone]

    def joint(self, name: str, embedder: str = "") -> JointSpace:
        """The joint space ``name`` over the features of ``embedder`` (default: the server's backbone)."""
        try:
            return self.joints.get(name, backbone_of(embedder).name if embedder else None)
        except KeyError:
            fail(Error.BAD_REQUEST, unknown_joint(name, self.joints.dims()))

    def cheap_search(self, request: Any) -> bool:
        """Whether a Search by vector, id or words does little enough index work to run on the event loop:
        an approximate index answers it, or an exact scan of the collection is about a millisecond."""
        try:
            c = self.store.get(request.collection)
        except Exception:
            return True  # refused at once, whichever thread answers
        if not c.inline_ok():
            return False
        joint = request.WhichOneof("query") == "text" or request.space == 2  # SPACE_JOINT
        if not joint and not request.exact and c.approximate():
            return True
        dim = c.settings.joint_dim if joint else c.settings.dim
        return c.rows * dim <= INLINE_SCAN

    def vocabulary_index(self, text_name: str) -> tuple[list[str], ExactIndex]:
        """The default tagging vocabulary of a text space, indexed once."""
        with self._vocab_lock:
            if text_name not in self._vocab_indexes:
                words, matrix = self.joints.text(text_name).vocabulary()
                index = ExactIndex(matrix.shape[1], capacity=len(words))
                index.add(matrix)
                self._vocab_indexes[text_name] = (words, index)
            return self._vocab_indexes[text_name]

    def close(self) -> None:
        self.store.close()
        with self._embedders_lock:
            for e in self._embedders.values():
                e.close()
            self._embedders.clear()


def _image_embedder(config: Config, backbone: str) -> ImageEmbedder:
    return ImageEmbedder(
        threads=config.torch_threads,
        max_pixels=config.max_pixels,
        decode_budget=config.max_decoding_pixels,
        max_batch=config.embed_max_batch,
        # Bulk work (the default collection's build, many-image requests) goes to the workers in forwards of
        # the same few images: at 16 a forward, each worker's heap kept ~250 MB more after the build (1,906
        # against 1,262 MB PSS in all, bench/footprint.py), and one-thread forwards are no faster per image.
        batch_size=config.embed_max_batch,
        max_wait_s=config.embed_max_wait_ms / 1000,
        max_queue=config.embed_queue,
        processes=config.embed_processes,
        workers=os.cpu_count() or 1,
        backbone=backbone,
    )


def open_store(config: Config, images: ImageEmbedder, joints: JointRegistry) -> CollectionStore:
    milvus = MilvusBackend(config.milvus_uri, config.milvus_token) if config.milvus_uri else None
    return CollectionStore(
        config.data_dir,
        milvus=milvus,
        known_embedders=embedder_names(),
        known_joints=joints.dims,
        fsync=config.fsync,
        snapshot_wal_bytes=config.snapshot_wal_bytes,
    )
