"""Joint image-word spaces: maps from CNN image features into a text space, so that images and words meet.

``conse:TEXT`` needs no training (``embedder.conse``); ``head:NAME`` is a trained DeViSE head
(``embedder.head``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from embedder.backbones import BACKBONES
from embedder.conse import ConSE
from embedder.head import HeadMismatch, HeadSpace, read_meta
from embedder.image import ImageEmbedder, ImageNetwork
from embedder.naming import HEAD_NAME
from embedder.tags import HierarchyTagger
from embedder.taxonomy import Taxonomy
from embedder.text import MiniLMText, SpacyText, TextSpace
from embedder.words import WordVectors

# torchvision's display names of the 1,000 ImageNet classes, in the classifiers' order, kept as a file:
# importing torchvision for them pulled in torch._dynamo, about 150 MB in the server and every worker.
# tests/test_joint.py checks the file against torchvision.
IMAGENET_CLASSES: list[str] = (
    (Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines()
)

# A trained head and ConSE map into the same text space; ``head+conse:NAME`` serves their mean, which keeps
# the head's sharpness on the classes it was trained on and ConSE's reach beyond them, on photos the ImageNet
# classifier knows (training/heads_eval.py; on Fashion-MNIST's 28 px scans it does not, and the mix loses).
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
    backbone: str  # the backbone whose features it maps

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
        self._spaces: dict[tuple[str, str], JointSpace] = {}
        self._taxonomy: Taxonomy | None = None
        self._tagger: HierarchyTagger | None = None
        self._classifiers: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def dims(self) -> dict[str, int]:
        """Every joint space offered, with its width: the ConSE spaces, and each head in ``heads_dir`` alone
        (``head:NAME``) and mixed with ConSE (``head+conse:NAME``)."""
        dims = {f"conse:{t}": d for t, d in self.TEXT_DIMS.items()}
        if self._heads_dir.is_dir():
            for path in sorted(self._heads_dir.glob("*.safetensors")):
                if not HEAD_NAME.fullmatch(path.stem):
                    continue
                try:
                    dims[f"head:{path.stem}"] = dims[f"head+conse:{path.stem}"] = read_meta(path).dim
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

    def tagger(self) -> HierarchyTagger:
        """The WordNet hierarchy tagger over the ImageNet classes (built once)."""
        with self._lock:
            if self._tagger is None:
                self._tagger = HierarchyTagger(self._taxonomy_locked())
            return self._tagger

    def classifier(self, backbone: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A backbone's ImageNet classifier (weight (classes, dim), bias); the server's own by default."""
        backbone = backbone or self._images.model_name
        with self._lock:
            if backbone not in self._classifiers:
                if backbone == self._images.model_name:
                    self._classifiers[backbone] = self._images.classifier()
                else:
                    spec = BACKBONES[backbone]
                    linear = ImageNetwork(str(spec.weights()), backbone).classifier
                    w, b = linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()
                    self._classifiers[backbone] = (w, b)
            return self._classifiers[backbone]

    def class_probabilities(self, features: np.ndarray, backbone: str | None = None) -> np.ndarray:
        """(m, classes) ImageNet class probabilities of a backbone's features (plain softmax)."""
        weight, bias = self.classifier(backbone)
        logits = np.asarray(features, np.float32) @ weight.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def get(self, name: str, backbone: str | None = None) -> JointSpace:
        """The joint space ``name`` over features of ``backbone``. Without one: the server's backbone for
        ConSE, the backbone a head was trained on for ``head:`` and ``head+conse:``."""
        kind, _, arg = name.partition(":")
        path = self._heads_dir / f"{arg}.safetensors"
        is_head = kind in ("head", "head+conse") and bool(HEAD_NAME.fullmatch(arg)) and path.is_file()
        if not (is_head or (kind == "conse" and arg in self.TEXT_DIMS)):
            raise KeyError(name)
        meta = read_meta(path) if is_head else None
        backbone = backbone or (meta.backbone if meta else self._images.model_name)
        if backbone not in BACKBONES:
            raise HeadMismatch(
                f"head {arg!r} was trained on {backbone} features, which this server does not compute "
                f"(it has {', '.join(BACKBONES)})"
            )
        classifier = self.classifier(backbone) if kind in ("conse", "head+conse") else None
        with self._lock:
            key = (name, backbone)
            if key not in self._spaces:
                if meta is None:
                    assert classifier is not None
                    self._spaces[key] = ConSE(
                        classifier, self._text_locked(arg), self._taxonomy_locked(),
                        cache_dir=self._cache_dir, backbone=backbone,
                    )  # fmt: skip
                else:
                    text = self._text_locked(meta.text)
                    head = HeadSpace(arg, path, text, backbone, BACKBONES[backbone].dim)
                    if classifier is None:
                        self._spaces[key] = head
                    else:
                        taxonomy = self._taxonomy_locked()
                        conse = ConSE(
                            classifier, text, taxonomy, cache_dir=self._cache_dir, backbone=backbone
                        )
                        self._spaces[key] = HeadWithConSE(head, conse)
            return self._spaces[key]


class HeadWithConSE:
    """``head+conse:NAME``: a trained head's joint vectors mixed with ConSE's in the head's text space (the
    JointSpace protocol). The head is sharp on the classes it was trained on; ConSE reaches the others."""

    def __init__(self, head: HeadSpace, conse: ConSE, weight: float = HEAD_CONSE_WEIGHT) -> None:
        self.name = f"head+conse:{head.name.partition(':')[2]}"
        self.head, self.conse, self.weight = head, conse, weight
        self.text = head.text
        self.dim = head.dim
        self.input_size = head.input_size
        self.backbone = head.backbone

    def project(self, features: np.ndarray) -> np.ndarray:
        return mix_head_conse(self.head.project(features), self.conse.project(features), self.weight)
