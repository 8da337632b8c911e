"""Joint image-word spaces: maps from CNN image features into a text space, so that images and words meet.

``ConSE`` (Norouzi et al., 2014, "Zero-Shot Learning by Convex Combination of Semantic Embeddings") needs no
training: an image's joint vector is the probability-weighted mean of the text vectors of its top-T ImageNet
classes, taken from MobileNetV2's own classifier. A class whose name has no text vector gets no weight.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import torchvision

from embedder.head import HeadMismatch, HeadSpace, read_meta
from embedder.image import ImageEmbedder
from embedder.naming import HEAD_NAME
from embedder.text import MiniLMText, SpacyText, TextSpace
from embedder.words import WordVectors

IMAGENET_CLASSES: list[str] = list(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])

# ImageNet's classes follow WordNet ids, so its super-categories are contiguous index ranges. Adding the
# super-category word to a class name settles names that mean something else in plain text: the dog breed
# "chow" is not food, "Granny Smith" is a fruit, not a grandmother.
_HINTS = (
    (range(151, 269), "dog"),
    (range(0, 398), "animal"),
    (range(948, 958), "fruit"),
    (range(924, 948), "food"),
    (range(959, 966), "food"),
)


def class_phrase(index: int) -> str:
    """The text a class is embedded from: its name plus its super-category word, if it has one."""
    name = IMAGENET_CLASSES[index]
    for span, hint in _HINTS:
        if index in span:
            return f"{name} {hint}"
    return name


class ConSE:
    def __init__(self, images: ImageEmbedder, text: TextSpace, top: int = 10) -> None:
        self.name = f"conse:{text.name}"
        self.input_size = 0  # any: the ImageNet classifier accepts features of every input size
        self.text = text
        self.dim = text.dim
        self.top = top
        weight, bias = images.classifier()
        self._weight = np.ascontiguousarray(weight.T)  # (1280, 1000)
        self._bias = bias
        vectors = np.zeros((len(IMAGENET_CLASSES), text.dim), np.float32)
        self._has_vector = np.zeros(len(IMAGENET_CLASSES), bool)
        for n, name in enumerate(IMAGENET_CLASSES):
            if any(text.known(w) for w in name.lower().split()):
                vectors[n] = text.encode([class_phrase(n)])[0]
                self._has_vector[n] = True
        self._class_vectors = vectors

    def project(self, features: np.ndarray) -> np.ndarray:
        """(m, 1280) raw image features -> (m, dim) joint vectors (not normalised)."""
        logits = features @ self._weight + self._bias
        logits = np.where(self._has_vector, logits, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        top = np.argpartition(-probs, self.top - 1, axis=1)[:, : self.top]
        weights = np.take_along_axis(probs, top, axis=1)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("mt,mtd->md", weights, self._class_vectors[top]).astype(np.float32)

    def top_classes(self, features: np.ndarray, n: int = 5) -> list[list[tuple[str, float]]]:
        logits = features @ self._weight + self._bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1)[:, :n]
        return [
            [(IMAGENET_CLASSES[c], float(p[c])) for c in row] for p, row in zip(probs, order, strict=True)
        ]


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

    def dims(self) -> dict[str, int]:
        """Every joint space offered, with its width: the ConSE spaces and each head in ``heads_dir``."""
        dims = {f"conse:{t}": d for t, d in self.TEXT_DIMS.items()}
        if self._heads_dir.is_dir():
            for path in sorted(self._heads_dir.glob("*.safetensors")):
                if not HEAD_NAME.fullmatch(path.stem):
                    continue
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

    def get(self, name: str) -> JointSpace:
        with self._lock:
            if name not in self._spaces:
                kind, _, arg = name.partition(":")
                if kind == "conse" and arg in self.TEXT_DIMS:
                    self._spaces[name] = ConSE(self._images, self._text_locked(arg))
                elif (
                    kind == "head"
                    and HEAD_NAME.fullmatch(arg)
                    and (self._heads_dir / f"{arg}.safetensors").is_file()
                ):
                    path = self._heads_dir / f"{arg}.safetensors"
                    text = self._text_locked(read_meta(path).text)
                    self._spaces[name] = HeadSpace(arg, path, text, self._images.model_name, self._images.dim)
                else:
                    raise KeyError(name)
            return self._spaces[name]
