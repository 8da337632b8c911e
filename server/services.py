"""The objects the servicers share: configuration, collections, embedders and the word index."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from embedder.image import ImageEmbedder
from embedder.words import WordVectors
from kernels import ExactIndex, l2_normalize
from server.config import Config
from server.storage import CollectionStore

log = logging.getLogger("visionsearch.services")


@dataclass
class Services:
    config: Config
    store: CollectionStore
    images: ImageEmbedder
    words: WordVectors
    word_index: ExactIndex

    @classmethod
    def start(cls, config: Config) -> Services:
        t0 = time.perf_counter()
        images = ImageEmbedder(threads=config.torch_threads, max_pixels=config.max_pixels)
        words = WordVectors()
        word_index = ExactIndex(words.dim, capacity=len(words.words))
        word_index.add(l2_normalize(words.vocabulary_matrix()))
        store = CollectionStore(
            config.data_dir,
            known_embedders={images.model_name: images.dim},
            fsync=config.fsync,
            snapshot_wal_bytes=config.snapshot_wal_bytes,
        )
        log.info("models and collections loaded in %.1fs", time.perf_counter() - t0)
        return cls(config, store, images, words, word_index)

    def nearest_words(self, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        scores, rows = self.word_index.search(l2_normalize(vector[None, :]), k)
        return [(self.words.words[r], float(s)) for s, r in zip(scores[0], rows[0], strict=True)]

    def close(self) -> None:
        self.store.close()
