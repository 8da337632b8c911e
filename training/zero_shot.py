"""Zero-shot search as people do it: query files, the corpus they are scored on, and the measures.

A query file holds one JSON object per line: ``{"query": "poultry", "type": "hypernym", "relevant": [...]}``.
``relevant`` are shell-style patterns over item keys: ``tuxpaint/<path below the stamps folder, no
extension>`` for a Tux Paint photo, ``fashion/<class>`` for every Fashion-MNIST photo of a class. The corpus
is the default collection's: the Tux Paint stamp photos plus the balanced Fashion-MNIST test sample.

Measures per query, over the top 10: precision (P@10); nDCG@10 with binary gains; and P@10 divided by the best
possible P@10 (min(10, relevant) / 10), since a query with 3 relevant photos can score at most 0.3.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedder.datasets import FASHION_CLASSES, StampPhoto, fashion_mnist, fashion_sample, tuxpaint_photos
from embedder.image import ImageEmbedder, input_size
from training.features import fashion_sample_features, stamp_features

QUERY_KINDS = ("hypernym", "scene", "attribute", "activity", "phrase")
K = 10


class QueryFileError(ValueError):
    """A query file that cannot be scored: bad JSON, missing fields, patterns that match nothing."""


@dataclass(frozen=True)
class Query:
    text: str
    kind: str
    relevant: tuple[str, ...]


def load_queries(path: Path) -> list[Query]:
    queries = []
    for n, line in enumerate(path.read_text(encoding="utf8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            q = Query(str(obj["query"]), str(obj.get("type", "")), tuple(obj["relevant"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise QueryFileError(
                f"{path}:{n}: expected {{'query': str, 'type': str, 'relevant': [patterns]}} ({e})"
            ) from None
        if not q.text.strip() or not q.relevant:
            raise QueryFileError(f"{path}:{n}: a query needs a text and at least one relevant pattern")
        queries.append(q)
    if not queries:
        raise QueryFileError(f"{path} holds no queries")
    return queries


def _matches(key: str, pattern: str) -> bool:
    """A pattern matches a key, or names a folder of keys ("fashion/Sandal" holds "fashion/Sandal/00012")."""
    return fnmatch.fnmatchcase(key, pattern) or fnmatch.fnmatchcase(key, pattern + "/*")


@dataclass
class Corpus:
    keys: list[str]
    payloads: list[dict[str, str]]  # as the default collection stores them
    stamps: list[StampPhoto]  # rows 0 .. len(stamps) - 1
    fashion_indices: list[int]  # the rows after them, Fashion-MNIST test indices
    _relevant: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict, repr=False)

    def relevant_rows(self, query: Query) -> np.ndarray:
        if query.relevant not in self._relevant:
            rows = [i for i, key in enumerate(self.keys) if any(_matches(key, p) for p in query.relevant)]
            self._relevant[query.relevant] = np.array(rows, dtype=np.int64)
        return self._relevant[query.relevant]

    def check(self, queries: Sequence[Query]) -> None:
        """Every pattern of every query must match an item (a typo would silently lower the score)."""
        for q in queries:
            for p in q.relevant:
                if not any(_matches(key, p) for key in self.keys):
                    raise QueryFileError(f"query {q.text!r}: pattern {p!r} matches no item of the corpus")


def default_corpus(fashion_photos: int = 1000, categories: Sequence[str] = ()) -> Corpus:
    """The items of the default collection (server/default_collection.py), in a fixed order; with
    ``categories``, only the Tux Paint photos of those top folders (quick runs and tests)."""
    stamps = [p for p in tuxpaint_photos() if not categories or p.category in categories]
    keys = [f"tuxpaint/{p.id}" for p in stamps]
    payloads = [{"label": p.name, "caption": p.caption, "category": p.category} for p in stamps]
    indices: list[int] = []
    if fashion_photos:
        _, labels = fashion_mnist("test")
        per_class = -(-fashion_photos // len(FASHION_CLASSES))
        indices = fashion_sample("test", per_class)[:fashion_photos]
        for i in indices:
            label = FASHION_CLASSES[labels[i]]
            keys.append(f"fashion/{label}/{i:05d}")
            payloads.append({"label": label, "category": "clothing"})
    return Corpus(keys, payloads, stamps, indices)


def corpus_features(corpus: Corpus, images: ImageEmbedder, cache_dir: Path) -> np.ndarray:
    """(items, dim) backbone features of the corpus at the backbone's default input size."""
    size = input_size(images.model_name)
    stamps, _ = stamp_features(images, cache_dir, size, corpus.stamps)
    parts = [stamps]
    if corpus.fashion_indices:
        parts.append(fashion_sample_features(images, cache_dir, "test", corpus.fashion_indices, size))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


# ------------------------------------------------------------------------------------------ measures


def query_scores(ranking: np.ndarray, relevant: np.ndarray, k: int = K) -> dict[str, float]:
    """Measures of one query from its ranking (item rows, best first)."""
    top = ranking[:k]
    hits = np.isin(top, relevant)
    best = min(k, len(relevant))
    dcg = float(np.sum(hits / np.log2(np.arange(2, len(top) + 2))))
    ideal = float(np.sum(1 / np.log2(np.arange(2, best + 2))))
    p = float(hits.sum() / k)
    return {
        "p_at_10": p,
        "ndcg_at_10": dcg / ideal if ideal else 0.0,
        "p_at_10_normalised": float(hits.sum() / best) if best else 0.0,
        "relevant": float(len(relevant)),
    }


def score_rankings(
    queries: Sequence[Query], rankings: np.ndarray, corpus: Corpus
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean measures and one row per query (with the keys of its top 3 items)."""
    rows = []
    for q, ranking in zip(queries, rankings, strict=True):
        s = query_scores(ranking, corpus.relevant_rows(q))
        rows.append({"query": q.text, "type": q.kind, **s, "top3": [corpus.keys[i] for i in ranking[:3]]})
    means = {m: float(np.mean([r[m] for r in rows])) for m in ("p_at_10", "ndcg_at_10", "p_at_10_normalised")}
    return means, rows


def top_rows(scores: np.ndarray, k: int = K) -> np.ndarray:
    """(queries, items) scores -> (queries, k) rows, best first (ties broken by row for reproducibility)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order[:, :k]


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n == 0, 1, n), dtype=np.float32)


def dense_scores(joint: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine of every query to every item, as the server's joint-space search ranks them."""
    return unit(queries) @ unit(joint).T


def rrf(rankings: Sequence[np.ndarray], n: int, weights: Sequence[float], k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion of full rankings (rows best first) into (n,) fused scores."""
    fused = np.zeros(n, np.float64)
    for ranking, w in zip(rankings, weights, strict=True):
        fused[ranking] += w / (k + 1 + np.arange(len(ranking)))
    return fused


# ------------------------------------------------------------------------------------------ tags

_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class TagTruth:
    row: int  # corpus row
    photo: str
    name_words: frozenset[str]  # the words of the photo's name, as WordNet lemmas
    parents: frozenset[str]  # the direct WordNet hypernyms of the name's first noun sense, as text


def tag_truths(
    corpus: Corpus, wn: Any, categories: Sequence[str] = ("animals", "food", "plants")
) -> list[TagTruth]:
    """For the stamp photos of some categories: the words a tag should hit (name word or direct parent)."""
    out = []
    for row, ph in enumerate(corpus.stamps):
        if ph.category not in categories:
            continue
        words = [w for w in _WORD.findall(ph.name.lower()) if len(w) > 1]
        name_words = {wn.morphy(w, "n") or w for w in words}
        synsets = wn.synsets("_".join(words), pos="n") or (wn.synsets(words[-1], pos="n") if words else [])
        parents: set[str] = set()
        if synsets:
            for p in synsets[0].hypernyms() + synsets[0].instance_hypernyms():
                parents |= {lem.replace("_", " ").lower() for lem in p.lemma_names()}
        out.append(TagTruth(row, ph.id, frozenset(name_words), frozenset(parents)))
    return out


def tag_form(word: str) -> str:
    from embedder.tags import word_form

    return word_form(word)


def noun_lemma(wn: Any, word: str) -> str:
    """A tag's lemma, word by word (WordNet's morphy as a noun): "lions" -> "lion"."""
    return " ".join(wn.morphy(x, "n") or x for x in word.split())


def tag_hits(t: TagTruth, words: Sequence[str], wn: Any) -> tuple[bool, bool]:
    """(a word names the photo, a word names its direct parent), each word as given or as its lemma."""
    lemmas = {noun_lemma(wn, w) for w in words}
    name_hit = bool(lemmas & t.name_words) or any(w in t.name_words for w in words)
    parent_hit = bool(set(words) & t.parents) or bool(lemmas & t.parents)
    return name_hit, parent_hit


def score_tags(
    truths: Sequence[TagTruth], tags: Sequence[Sequence[str]], wn: Any, k: int = 5
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Share of photos whose top-k tags hold a word of their name or their name's direct parent; share that
    holds a name word; share whose top-k has two forms of one word."""
    rows = []
    for t, ts in zip(truths, tags, strict=True):
        top = [w.lower() for w in ts[:k]]
        name_hit, parent_hit = tag_hits(t, top, wn)
        forms = [tag_form(w) for w in top]
        rows.append({
            "photo": t.photo, "tags": list(ts[:k]), "name_hit": name_hit, "parent_hit": parent_hit,
            "duplicate_forms": len(set(forms)) < len(forms),
        })  # fmt: skip
    n = max(1, len(rows))
    return {
        "photos": float(len(rows)),
        "name_or_parent_in_top5": sum(bool(r["name_hit"] or r["parent_hit"]) for r in rows) / n,
        "name_in_top5": sum(bool(r["name_hit"]) for r in rows) / n,
        "with_duplicate_forms": sum(bool(r["duplicate_forms"]) for r in rows) / n,
    }, rows


TagFn = Callable[[np.ndarray], list[list[str]]]
