"""The ImageNet classes in WordNet: what ConSE embeds for each class and what tags are drawn from.

Built once from WordNet 3.0 (``embedder.wordnet``, a few seconds) and cached as JSON in the data folder's
cache, so a server starts without reading WordNet. For each class: its synset, its lemmas (synonyms), its
gloss, its chain of first hypernyms (tabby -> domestic cat -> cat -> feline -> carnivore -> ...), and every
ancestor along any hypernym path (for tags, which add up class probabilities under each ancestor).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedder.wordnet import hypernym_chain, lemma_text, map_imagenet_classes, open_wordnet

VERSION = 2  # 2: the chain follows the deepest parent


@dataclass(frozen=True)
class ImageNetClass:
    name: str  # torchvision's display name
    synset: str  # "" when the class could not be mapped
    lemmas: tuple[str, ...]  # "tabby", "tabby cat"
    gloss: str
    chain: tuple[str, ...]  # first-hypernym chain, nearest first
    ancestors: tuple[str, ...]  # every hypernym (any path), nearest first


@dataclass(frozen=True)
class SynsetInfo:
    lemmas: tuple[str, ...]  # as people write them: "big cat"
    depth: int  # WordNet min_depth (entity is 0)
    parents: tuple[str, ...]  # direct hypernyms


@dataclass(frozen=True)
class Taxonomy:
    classes: tuple[ImageNetClass, ...]
    synsets: dict[str, SynsetInfo]  # every class synset and ancestor

    @classmethod
    def load(cls, names: Sequence[str], cache_dir: Path) -> Taxonomy:
        """From the cache, or built from WordNet (which must then be installed: AssetMissing says how)."""
        key = f"{VERSION}-" + hashlib.sha256("\n".join(names).encode()).hexdigest()[:12]
        path = cache_dir / f"imagenet-wordnet-{key}.json"
        if path.is_file():
            return cls.from_json(json.loads(path.read_text()))
        data = build(names, cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
        return cls.from_json(data)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Taxonomy:
        classes = tuple(
            ImageNetClass(c["name"], c["synset"], tuple(c["lemmas"]), c["gloss"], tuple(c["chain"]),
                          tuple(c["ancestors"]))
            for c in data["classes"]
        )  # fmt: skip
        synsets = {
            k: SynsetInfo(tuple(v["lemmas"]), v["depth"], tuple(v["parents"]))
            for k, v in data["synsets"].items()
        }
        return cls(classes, synsets)


def build(names: Sequence[str], cache_dir: Path) -> dict[str, Any]:
    wn = open_wordnet(cache_dir)
    mapped = map_imagenet_classes(wn, names)
    classes = []
    synsets: dict[str, Any] = {}

    def note(s: Any) -> None:
        if s.name() not in synsets:
            parents = s.hypernyms() + s.instance_hypernyms()
            synsets[s.name()] = {
                "lemmas": [lemma_text(lem) for lem in s.lemma_names()],
                "depth": s.min_depth(),
                "parents": [p.name() for p in parents],
            }

    for name, m in zip(names, mapped, strict=True):
        if m is None:
            classes.append(
                {"name": name, "synset": "", "lemmas": [name], "gloss": "", "chain": [], "ancestors": []}
            )
            continue
        s = wn.synset(m.synset)
        note(s)
        chain = hypernym_chain(s, limit=20)
        ancestors: list[Any] = []
        frontier = [s]
        while frontier:  # breadth first: nearest ancestors first
            nxt = []
            for f in frontier:
                for p in f.hypernyms() + f.instance_hypernyms():
                    if p not in ancestors:
                        ancestors.append(p)
                        nxt.append(p)
            frontier = nxt
        for a in ancestors:
            note(a)
        lemmas = [name] + [
            lemma_text(lem) for lem in s.lemma_names() if lemma_text(lem).lower() != name.lower()
        ]
        classes.append({
            "name": name, "synset": s.name(), "lemmas": lemmas, "gloss": s.definition(),
            "chain": [c.name() for c in chain], "ancestors": [a.name() for a in ancestors],
        })  # fmt: skip
    return {"version": VERSION, "classes": classes, "synsets": synsets}
