"""ConSE (Norouzi et al., 2014, "Zero-Shot Learning by Convex Combination of Semantic Embeddings").

No training: an image's joint vector is the probability-weighted mean of the text vectors of its top ImageNet
classes, read from the backbone's own classifier. What makes it work on the words people search with is
what each class's text vector holds (``ConseSettings.semantics``):

- ``wordnet`` (the default): the class's names and synonyms, its WordNet hypernyms (tabby -> domestic cat ->
  cat -> feline -> carnivore -> mammal, each level weighted ``hypernym_decay`` times the one below) and its
  gloss, encoded part by part and added with the part weights. "reptile", "footwear" and "poultry" then
  find their photos although no class is named so.
- ``hints``: the first version, the class name plus a super-category word for a few ranges ("chow dog").

How sharp the image side is: class probabilities are a softmax of the logits divided by ``temperature``
(above 1 spreads weight over related classes) and the ``top`` most probable classes are mixed. The defaults
were calibrated on the tuning half of the query set (``python -m training.calibrate``), never on the
held-out half.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedder.taxonomy import Taxonomy
from embedder.text import TextSpace

# ImageNet's classes follow WordNet ids, so its super-categories are contiguous index ranges (the first
# version's class semantics, kept for comparison).
_HINTS = (
    (range(151, 269), "dog"),
    (range(0, 398), "animal"),
    (range(948, 958), "fruit"),
    (range(924, 948), "food"),
    (range(959, 966), "food"),
)
_TOKEN = re.compile(r"[a-z]+")
# Bump when class texts or their encoding change.
CLASS_TEXT_VERSION = 3


@dataclass(frozen=True)
class ConseSettings:
    semantics: str = "wordnet"  # "wordnet" or "hints"
    name_weight: float = 1.0
    hypernym_weight: float = 1.0
    hypernym_decay: float = 0.6  # weight of each hypernym level relative to the level below it
    hypernym_levels: int = 8
    # Hypernyms shallower than this (entity, object, whole, living thing, artifact: depth <= 4) say nothing.
    min_depth: int = 5
    gloss_weight: float = 0.3
    temperature: float = 3.0
    top: int = 10

    def text_key(self) -> str:
        """What the class vectors depend on (not the image-side settings), with the version of the code that
        makes them: a cached file from another version is never read."""
        d = asdict(self) | {"version": CLASS_TEXT_VERSION}
        for k in ("temperature", "top"):
            d.pop(k)
        return json.dumps(d, sort_keys=True)


# The first version: class name plus a super-category word, the plain softmax, the top 10 classes.
LEGACY = ConseSettings(semantics="hints", temperature=1.0, top=10)
# Calibrated on the tuning half (training/calibrate.py; bench/results/zero_shot/calibration.json): the best
# setting of the chosen backbone, efficientnet_lite1, with MiniLM text (conse:minilm).
DEFAULT = ConseSettings()


def hint_phrase(index: int, name: str) -> str:
    for span, hint in _HINTS:
        if index in span:
            return f"{name} {hint}"
    return name


def _knows_any(text: TextSpace, phrase: str) -> bool:
    return any(text.known(t) for t in _TOKEN.findall(phrase.lower()))


def class_vectors(
    taxonomy: Taxonomy, text: TextSpace, settings: ConseSettings, cache_dir: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(classes, dim) unit text vectors of the ImageNet classes and a mask of the classes that have one."""
    path = None
    if cache_dir is not None:
        names = "\n".join(c.name for c in taxonomy.classes)
        # The same space encodes with or without stop words (SpacyText.drop_stopwords): part of the key.
        encoder = f"{text.name}-{getattr(text, 'drop_stopwords', '')}"
        key = hashlib.sha256(f"{encoder}\n{settings.text_key()}\n{names}".encode()).hexdigest()[:16]
        path = cache_dir / f"conse-classes-{text.name}-{key}.npz"
        if path.is_file():
            with np.load(path) as f:
                return f["vectors"], f["has"]
    vectors, has = _class_vectors(taxonomy, text, settings)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, vectors=vectors, has=has)
        os.replace(tmp, path)
    return vectors, has


def _class_vectors(taxonomy: Taxonomy, text: TextSpace, s: ConseSettings) -> tuple[np.ndarray, np.ndarray]:
    n = len(taxonomy.classes)
    if s.semantics == "hints":
        phrases = [hint_phrase(i, c.name) for i, c in enumerate(taxonomy.classes)]
        # As the first version: a class counts if a space-separated word of its name is known.
        has = np.array([any(text.known(w) for w in c.name.lower().split()) for c in taxonomy.classes])
        vectors = np.zeros((n, text.dim), np.float32)
        rows = np.flatnonzero(has)
        vectors[rows] = text.encode([phrases[i] for i in rows])
        return vectors, has
    if s.semantics != "wordnet":
        raise ValueError(f"unknown ConSE semantics {s.semantics!r}")
    # Every part of every class, encoded in one batch: (class, weight, phrase).
    parts: list[tuple[int, float, str]] = []
    for i, c in enumerate(taxonomy.classes):
        parts.append((i, s.name_weight, ", ".join(c.lemmas)))
        level = 0
        total = sum(s.hypernym_decay**k for k in range(s.hypernym_levels))
        for syn in c.chain:
            info = taxonomy.synsets[syn]
            if info.depth < s.min_depth or level >= s.hypernym_levels:
                continue
            w = s.hypernym_weight * s.hypernym_decay**level / total
            parts.append((i, w, ", ".join(info.lemmas)))
            level += 1
        if c.gloss and s.gloss_weight:
            parts.append((i, s.gloss_weight, c.gloss))
    keep = [p for p in parts if p[1] > 0 and _knows_any(text, p[2])]
    # Hypernyms repeat across classes ("dog, domestic dog, Canis familiaris" above 118 breeds): encode once.
    unique = list(dict.fromkeys(p[2] for p in keep))
    encoded = dict(zip(unique, text.encode(unique), strict=True))
    vectors = np.zeros((n, text.dim), np.float32)
    for i, w, phrase in keep:
        vectors[i] += w * encoded[phrase]
    norms = np.linalg.norm(vectors, axis=1)
    has = norms > 0
    vectors[has] /= norms[has, None]
    return vectors, has


class ConSE:
    """A joint space over one backbone's ImageNet classifier (the JointSpace protocol of embedder.joint)."""

    def __init__(
        self,
        classifier: tuple[np.ndarray, np.ndarray],
        text: TextSpace,
        taxonomy: Taxonomy,
        settings: ConseSettings = DEFAULT,
        *,
        cache_dir: Path | None = None,
        backbone: str = "mobilenet_v2",
    ) -> None:
        self.name = f"conse:{text.name}"
        self.input_size = 0  # any: the classifier accepts features of every input size
        self.backbone = backbone
        self.text = text
        self.dim = text.dim
        self.settings = settings
        self.taxonomy = taxonomy
        weight, bias = classifier
        self._weight = np.ascontiguousarray(weight.T, dtype=np.float32)  # (features, classes)
        self._bias = np.asarray(bias, np.float32)
        self.class_vectors, self.has_vector = class_vectors(taxonomy, text, settings, cache_dir)

    def with_settings(self, settings: ConseSettings, cache_dir: Path | None = None) -> ConSE:
        """The same classifier and text space with other settings (calibration, ablations)."""
        other = object.__new__(ConSE)
        other.__dict__.update(self.__dict__)
        other.settings = settings
        if settings.text_key() != self.settings.text_key():
            other.class_vectors, other.has_vector = class_vectors(
                self.taxonomy, self.text, settings, cache_dir
            )
        return other

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, np.float32) @ self._weight + self._bias

    def probabilities(self, features: np.ndarray, temperature: float | None = None) -> np.ndarray:
        """(m, classes) softmax of the logits over the classes that have a text vector."""
        t = self.settings.temperature if temperature is None else temperature
        logits = np.where(self.has_vector, self.logits(features) / t, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs.astype(np.float32)

    def project(self, features: np.ndarray) -> np.ndarray:
        """(m, features) raw image features -> (m, dim) joint vectors (not normalised)."""
        probs = self.probabilities(features)
        top = min(self.settings.top, probs.shape[1])
        idx = np.argpartition(-probs, top - 1, axis=1)[:, :top]
        weights = np.take_along_axis(probs, idx, axis=1)
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("mt,mtd->md", weights, self.class_vectors[idx]).astype(np.float32)

    def top_classes(self, features: np.ndarray, n: int = 5) -> list[list[tuple[str, float]]]:
        probs = self.probabilities(features, temperature=1.0)
        order = np.argsort(-probs, axis=1)[:, :n]
        names = [c.name for c in self.taxonomy.classes]
        return [[(names[c], float(p[c])) for c in row] for p, row in zip(probs, order, strict=True)]
