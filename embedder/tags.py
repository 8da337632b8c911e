"""Tags people can use: the specific word for what an image shows plus its useful WordNet hypernyms.

An image's ImageNet class probabilities are added up under every WordNet synset above the classes (a lion
photo's mass under "big cat" is P(lion) + P(tiger) + P(leopard) + ...). A synset scores its mass times its
specificity, 1 - log(classes under it) / log(all classes): a class itself has specificity 1, "big cat" 0.7,
"animal" 0.13. So the top of the list is the specific word when the classifier is sure, the nearest shared
parent when it hesitates between siblings, and a broad word ("animal", "fruit") only when nothing narrower
holds much weight. Each tag is a synset's first lemma ("big cat"); synsets too abstract to help
(entity, object, whole, artifact, ...) are never tags, and no two tags are forms of one word (lion/lions).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from embedder.taxonomy import Taxonomy

# Synsets every physical thing sits under: as tags they say nothing.
VACUOUS = frozenset({
    "entity.n.01", "physical_entity.n.01", "abstraction.n.06", "object.n.01", "whole.n.02",
    "living_thing.n.01",
    "organism.n.01", "artifact.n.01", "instrumentality.n.03", "matter.n.03", "substance.n.01", "solid.n.01",
    "causal_agent.n.01", "thing.n.12", "part.n.01", "relation.n.01", "psychological_feature.n.01",
    "attribute.n.02", "group.n.01", "measure.n.02", "unit.n.03", "natural_object.n.01", "material.n.01",
    "commodity.n.01", "physical_object.n.01", "component.n.03", "location.n.01", "point.n.02",
})  # fmt: skip

_TOKEN = re.compile(r"[a-z0-9]+")


def word_form(word: str) -> str:
    """A key shared by the forms of one word: lower case, each token singular (lions, lion -> lion;
    puppies -> puppy; boxes -> box; glasses -> glass)."""
    out = []
    for t in _TOKEN.findall(word.lower()):
        if len(t) > 4 and t.endswith("ies"):
            t = t[:-3] + "y"
        elif len(t) > 3 and t.endswith(("sses", "xes", "ches", "shes", "zes")):
            t = t[:-2]
        elif len(t) > 3 and t.endswith("s") and not t.endswith(("ss", "us", "is")):
            t = t[:-1]
        out.append(t)
    return " ".join(out)


def dedupe(words: Iterable[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """The first ``k`` of a best-first list with later forms of an earlier word left out."""
    seen: set[str] = set()
    out = []
    for w, s in words:
        f = word_form(w)
        if f in seen:
            continue
        seen.add(f)
        out.append((w, s))
        if len(out) == k:
            break
    return out


@dataclass(frozen=True)
class TagSettings:
    temperature: float = 1.0  # of the class probabilities tags add up
    specificity_power: float = 2.0  # chosen on the even-numbered photos of the tag evaluation


class HierarchyTagger:
    def __init__(self, taxonomy: Taxonomy, settings: TagSettings | None = None) -> None:
        self.settings = settings or TagSettings()
        n_classes = len(taxonomy.classes)
        nodes: list[str] = []
        index: dict[str, int] = {}
        members: list[list[int]] = []
        words: list[str] = []
        for ci, c in enumerate(taxonomy.classes):
            if not c.synset:
                continue
            for syn in (c.synset, *c.ancestors):
                if syn in VACUOUS:
                    continue
                if syn not in index:
                    index[syn] = len(nodes)
                    nodes.append(syn)
                    members.append([])
                    # A class is named as ImageNet names it; an ancestor by its first lemma.
                    words.append(c.name if syn == c.synset else taxonomy.synsets[syn].lemmas[0])
                members[index[syn]].append(ci)
        # A synset that is itself a class and an ancestor of others keeps its class name.
        self.synsets = nodes
        self.words = words
        self.lemmas = [taxonomy.synsets[s].lemmas for s in nodes]
        rows = [ci for m in members for ci in m]
        cols = [n for n, m in enumerate(members) for _ in m]
        self.membership = np.zeros((n_classes, len(nodes)), np.float32)  # class -> synsets above it
        self.membership[rows, cols] = 1.0
        sizes = self.membership.sum(axis=0)
        spec = 1.0 - np.log(sizes) / math.log(n_classes)
        self.specificity = np.clip(spec, 0.0, 1.0).astype(np.float32) ** self.settings.specificity_power
        by_form: dict[str, list[int]] = {}
        for n, lemmas in enumerate(self.lemmas):
            for lem in {word_form(x) for x in (words[n], *lemmas)}:
                by_form.setdefault(lem, []).append(n)
        self._by_form = by_form

    def classes_of(self, word: str) -> set[int]:
        """The ImageNet classes under the synsets a word names."""
        nodes = self._by_form.get(word_form(word), [])
        return {int(c) for n in nodes for c in np.flatnonzero(self.membership[:, n])}

    def knows(self, word: str) -> bool:
        """Whether a word names a class or a hypernym of one (in any of its forms)."""
        return word_form(word) in self._by_form

    def scores(self, probs: np.ndarray) -> np.ndarray:
        """(m, classes) class probabilities -> (m, synsets) tag scores in [0, 1]."""
        return (probs @ self.membership) * self.specificity

    def tags(
        self,
        probs: np.ndarray,
        k: int,
        *,
        min_score: float = 0.0,
        vocabulary: Sequence[str] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Best ``k`` tags per image, best first, at least ``min_score``. With ``vocabulary``, only those
        words (each scored by the best synset it names; words that name none are never returned)."""
        scores = self.scores(probs)
        out = []
        for row in scores:
            if vocabulary is None:
                order = np.argsort(-row, kind="stable")
                ranked: Iterator[tuple[str, float]] = ((self.words[n], float(row[n])) for n in order)
            else:
                best = []
                for w in vocabulary:
                    nodes = self._by_form.get(word_form(w))
                    if nodes:
                        best.append((w, float(max(row[n] for n in nodes))))
                best.sort(key=lambda t: -t[1])
                ranked = iter(best)
            out.append(dedupe(((w, s) for w, s in ranked if s >= min_score), k))
        return out
