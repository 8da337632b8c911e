"""Joint image-word spaces: maps from CNN image features into a text space, so that images and words meet.

``conse:TEXT`` needs no training (``embedder.conse``); ``head:NAME`` is a trained DeViSE head
(``embedder.head``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torchvision

from embedder.conse import ConSE
from embedder.head import HeadMismatch, HeadSpace, read_meta
from embedder.image import ImageEmbedder
from embedder.taxonomy import Taxonomy
from embedder.text import MiniLMText, SpacyText, TextSpace
from embedder.words import WordVectors

IMAGENET_CLASSES: list[str] = list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])

# A trained head and ConSE map into the same text space; ``headconse:NAME`` serves their mean, which keeps the
# head's sharpness on the classes it was trained on and ConSE's reach beyond them (training/heads_eval.py).
HEAD_CONSE_WEIGHT = 0.5


def mix_head_conse(head: np.ndarray, conse: np.ndarray, weight: float = HEAD_CONSE_WEIGHT) -> np.ndarray:
    """``weight`` of the head's unit vectors plus the rest of ConSE's."""

    def unit(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n == 0, 1, n)

    return (weight * unit(head) + (1 - weight) * unit(conse)).astype(np.float32)


class JointSpace(Protocol):
    name: str
    dim: int
    text: TextSpace
    input_size: int  # the image input size its features must be computed at

    def project(self, features: np.ndarray) -> np.ndarray: ...


class JointRegistry:
    """The joint spaces a server offers, built on first use (MiniLM takes seconds to load)."""

    TEXT_DIMS: ClassVar[dict[str, int]] = {"spacy": 300, "minilm": 384}

    def __init__(
        self,
        images: ImageEmbedder,
        words: WordVectors,
        *,
        cache_dir: Path,
        threads: int,
        heads_dir: Path | None = None,
    ) -> None:
        self._images = images
        self._heads_dir = heads_dir or cache_dir.parent / "heads"
        self._words = words
        self._cache_dir = cache_dir
        self._threads = threads
        self._lock = threading.Lock()
        self._text: dict[str, TextSpace] = {}
        self._spaces: dict[str, JointSpace] = {}
        self._taxonomy: Taxonomy | None = None

    def dims(self) -> dict[str, int]:
        """Every joint space offered, with its width: the ConSE spaces and each head in ``heads_dir``."""
        dims = {f"conse:{t}": d for t, d in self.TEXT_DIMS.items()}
        if self._heads_dir.is_dir():
            for path in sorted(self._heads_dir.glob("*.safetensors")):
                try:
                    dims[f"head:{path.stem}"] = read_meta(path).dim
                except (HeadMismatch, OSError, ValueError):
                    continue  # not a head checkpoint; get() names the problem if it is asked for
        return dims

    def text(self, name: str) -> TextSpace:
        with self._lock:
            return self._text_locked(name)

    def _text_locked(self, name: str) -> TextSpace:
        if name not in self._text:
            if name == "spacy":
                self._text[name] = SpacyText(self._words)
            elif name == "minilm":
                self._text[name] = MiniLMText(self._words, self._cache_dir, threads=self._threads)
            else:
                raise KeyError(name)
        return self._text[name]

    def taxonomy(self) -> Taxonomy:
        """The ImageNet classes in WordNet (cached in ``cache_dir``; built from WordNet the first time)."""
        with self._lock:
            return self._taxonomy_locked()

    def _taxonomy_locked(self) -> Taxonomy:
        if self._taxonomy is None:
            self._taxonomy = Taxonomy.load(IMAGENET_CLASSES, self._cache_dir)
        return self._taxonomy

    def get(self, name: str) -> JointSpace:
        with self._lock:
            if name not in self._spaces:
                kind, _, arg = name.partition(":")
                if kind == "conse" and arg in self.TEXT_DIMS:
                    self._spaces[name] = ConSE(
                        self._images.classifier(), self._text_locked(arg), self._taxonomy_locked(),
                        cache_dir=self._cache_dir, backbone=self._images.model_name,
                    )  # fmt: skip
                elif kind == "head" and arg and (self._heads_dir / f"{arg}.safetensors").is_file():
                    path = self._heads_dir / f"{arg}.safetensors"
                    text = self._text_locked(read_meta(path).text)
                    self._spaces[name] = HeadSpace(arg, path, text, self._images.model_name, self._images.dim)
                else:
                    raise KeyError(name)
            return self._spaces[name]
