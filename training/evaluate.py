"""Evaluate zero-shot search and tagging: ``python -m training.evaluate --queries FILE [--queries FILE2]``.

Scores words -> images (P@10, nDCG@10, P@10 over the best possible) for every query of each ``--queries`` file
on the default collection's photos, and image -> tags on the Tux Paint photos of animals, food and plants (the
share whose top 5 holds the photo's own name word or its name's direct WordNet parent). Prints a summary,
writes ``NAME.json`` (means, one row per query, the tag rows) and ``NAME.md`` (the per-query table, worst
first) to ``--out``.

``--conse legacy`` is the first version (class names with a super-category hint, plain softmax, top 10
classes, every query word counted, tags = nearest vocabulary words); ``--conse default`` is what the server
ships.
``--hybrid label,caption`` fuses BM25 over those payload fields with the dense ranking (reported apart:
it reads the photos' names and captions).

``--heads`` runs the evaluation of trained DeViSE heads instead (training/heads_eval.py, its own flags).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from embedder.conse import DEFAULT, LEGACY, ConSE, ConseSettings
from embedder.image import ImageEmbedder
from embedder.joint import IMAGENET_CLASSES
from embedder.tags import HierarchyTagger, dedupe
from embedder.taxonomy import Taxonomy
from embedder.text import MiniLMText, SpacyText, TextSpace
from embedder.wordnet import open_wordnet
from embedder.words import WordVectors
from kernels.lexical import LexicalIndex
from training.zero_shot import (
    Corpus,
    Query,
    QueryFileError,
    corpus_features,
    default_corpus,
    dense_scores,
    load_queries,
    rrf,
    score_rankings,
    score_tags,
    tag_truths,
    top_rows,
    unit,
)


@dataclass(frozen=True)
class Setup:
    """One configuration of the zero-shot pipeline."""

    backbone: str = "efficientnet_lite1"  # the server's default
    text: str = "minilm"  # the default collection's (conse:minilm)
    conse: ConseSettings = DEFAULT
    drop_stopwords: bool = True  # in spaCy query phrases
    direction: str = "forward"  # or "reverse": query -> nearest classes by text -> images by probability
    reverse_classes: int = 10
    tags: str = "hierarchy"  # or "nearest": nearest vocabulary words to the joint vector
    hybrid_fields: tuple[str, ...] = ()
    hybrid_weight: float = 1.0
    head: str = ""  # a DeViSE head checkpoint whose joint vectors are mixed with ConSE's
    head_weight: float = 0.5

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["conse"] = asdict(self.conse)
        return d


LEGACY_SETUP = Setup(
    backbone="mobilenet_v2", text="spacy", conse=LEGACY, drop_stopwords=False, tags="nearest"
)


@dataclass
class Evaluator:
    """Holds what is slow to make (features, text encoders, class vectors) across configurations."""

    data_dir: Path
    corpus: Corpus = field(default_factory=default_corpus)
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    _features: dict[str, np.ndarray] = field(default_factory=dict)
    _classifiers: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _text: dict[tuple[str, bool], TextSpace] = field(default_factory=dict)
    _words: WordVectors | None = None
    _taxonomy: Taxonomy | None = None
    _wn: Any = None

    @property
    def cache(self) -> Path:
        return self.data_dir / "cache"

    def features(self, backbone: str) -> np.ndarray:
        if backbone not in self._features:
            images = ImageEmbedder(threads=self.threads, max_pixels=40_000_000, backbone=backbone)
            self._features[backbone] = corpus_features(self.corpus, images, self.cache)
            self._classifiers[backbone] = images.classifier()
            images.close()
        return self._features[backbone]

    def classifier(self, backbone: str) -> tuple[np.ndarray, np.ndarray]:
        self.features(backbone)
        return self._classifiers[backbone]

    def words(self) -> WordVectors:
        if self._words is None:
            self._words = WordVectors()
        return self._words

    def text(self, name: str, drop_stopwords: bool = True) -> TextSpace:
        key = (name, drop_stopwords if name == "spacy" else True)
        if key not in self._text:
            if name == "spacy":
                self._text[key] = SpacyText(self.words(), drop_stopwords=drop_stopwords)
            else:
                self._text[key] = MiniLMText(self.words(), self.cache, threads=self.threads)
        return self._text[key]

    def taxonomy(self) -> Taxonomy:
        if self._taxonomy is None:
            self._taxonomy = Taxonomy.load(IMAGENET_CLASSES, self.cache)
        return self._taxonomy

    def wordnet(self) -> Any:
        if self._wn is None:
            self._wn = open_wordnet(self.cache)
        return self._wn

    def conse(self, setup: Setup) -> ConSE:
        text = self.text(setup.text, setup.drop_stopwords)
        return ConSE(
            self.classifier(setup.backbone), text, self.taxonomy(), setup.conse,
            cache_dir=self.cache, backbone=setup.backbone,
        )  # fmt: skip

    def joint(self, setup: Setup) -> np.ndarray:
        feats = self.features(setup.backbone)
        conse = self.conse(setup)
        joint = unit(conse.project(feats))
        if setup.head:
            from embedder.head import HeadSpace

            path = Path(setup.head)
            head = HeadSpace(path.stem, path, conse.text, setup.backbone, feats.shape[1])
            joint = unit((1 - setup.head_weight) * joint + setup.head_weight * head.project(feats))
        return joint

    def search_scores(self, setup: Setup, queries: list[Query]) -> np.ndarray:
        text = self.text(setup.text, setup.drop_stopwords)
        qv = text.encode([q.text for q in queries])
        if setup.direction == "reverse":
            conse = self.conse(setup)
            probs = conse.probabilities(self.features(setup.backbone))
            sims = unit(qv) @ conse.class_vectors.T  # (queries, classes)
            sims = np.where(conse.has_vector, sims, -np.inf)
            m = setup.reverse_classes
            idx = np.argpartition(-sims, m - 1, axis=1)[:, :m]
            w = np.zeros_like(sims)
            np.put_along_axis(w, idx, np.maximum(np.take_along_axis(sims, idx, axis=1), 0), axis=1)
            return np.asarray(w @ probs.T)
        scores = dense_scores(self.joint(setup), qv)
        if setup.hybrid_fields:
            index = LexicalIndex([
                " ".join(p.get(f, "") for f in setup.hybrid_fields) for p in self.corpus.payloads
            ])  # fmt: skip
            n = len(self.corpus.keys)
            fused = np.zeros_like(scores)
            for qi, q in enumerate(queries):
                dense = np.argsort(-scores[qi], kind="stable")
                lexical_rows, _ = index.search(q.text, n)
                fused[qi] = rrf([dense, lexical_rows], n, [1.0, setup.hybrid_weight])
            return fused
        return scores

    def evaluate(self, setup: Setup, queries: list[Query]) -> tuple[dict[str, float], list[dict[str, Any]]]:
        return score_rankings(queries, top_rows(self.search_scores(setup, queries)), self.corpus)

    def tags(self, setup: Setup, rows: list[int], k: int = 5) -> list[list[str]]:
        feats = self.features(setup.backbone)[rows]
        conse = self.conse(setup)
        if setup.tags == "nearest":
            words, vocab = conse.text.vocabulary()
            joint = unit(conse.project(feats))
            order = np.argsort(-(joint @ vocab.T), axis=1)[:, : 4 * k]
            return [[words[i] for i in r[:k]] for r in order]
        tagger = HierarchyTagger(self.taxonomy())
        probs = conse.probabilities(feats, temperature=1.0)
        return [[w for w, _ in t] for t in tagger.tags(probs, k)]

    def evaluate_tags(self, setup: Setup) -> tuple[dict[str, float], list[dict[str, Any]]]:
        wn = self.wordnet()
        truths = tag_truths(self.corpus, wn)
        return score_tags(truths, self.tags(setup, [t.row for t in truths]), wn)


def nearest_deduped(words: list[str], scores: np.ndarray, k: int) -> list[str]:
    order = np.argsort(-scores)
    return [w for w, _ in dedupe(((words[i], float(scores[i])) for i in order), k)]


def table(rows: list[dict[str, Any]], title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| query | type | P@10 | nDCG@10 | P@10 / best | relevant | top 3 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["p_at_10_normalised"], r["ndcg_at_10"])):
        top = ", ".join(k.split("/", 1)[1] for k in r["top3"])
        lines.append(
            f"| {r['query']} | {r['type']} | {r['p_at_10']:.2f} | {r['ndcg_at_10']:.2f} | "
            f"{r['p_at_10_normalised']:.2f} | {int(r['relevant'])} | {top} |"
        )
    return "\n".join(lines) + "\n"


def parse_setup(args: argparse.Namespace) -> Setup:
    setup = LEGACY_SETUP if args.conse == "legacy" else Setup()
    conse = setup.conse
    if args.conse_json:
        conse = replace(conse, **json.loads(args.conse_json))
    changes: dict[str, Any] = {"conse": conse}
    if args.backbone:
        changes["backbone"] = args.backbone
    if args.text:
        changes["text"] = args.text
    if args.tags:
        changes["tags"] = args.tags
    if args.direction:
        changes["direction"] = args.direction
    if args.hybrid:
        changes["hybrid_fields"] = tuple(f.strip() for f in args.hybrid.split(",") if f.strip())
    if args.head:
        changes["head"] = str(args.head)
        changes["head_weight"] = args.head_weight
    return replace(setup, **changes)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--heads" in argv:
        from training import heads_eval

        argv.remove("--heads")
        return heads_eval.main(argv)
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=Path, action="append", required=True, help="a query file (repeatable)")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("bench/results/zero_shot"))
    p.add_argument("--name", default="", help="output file stem (default: from the settings)")
    p.add_argument("--backbone", default="", help="default: efficientnet_lite1 (legacy: mobilenet_v2)")
    p.add_argument("--text", choices=("spacy", "minilm"), default="", help="default: minilm (legacy: spacy)")
    p.add_argument("--conse", choices=("default", "legacy"), default="default")
    p.add_argument("--conse-json", default="", help="ConseSettings overrides, e.g. '{\"temperature\": 3}'")
    p.add_argument("--direction", choices=("forward", "reverse"), default="")
    p.add_argument("--tags", choices=("hierarchy", "nearest"), default="")
    p.add_argument("--hybrid", default="", help="payload fields for BM25 fused with the dense ranking")
    p.add_argument("--head", type=Path, default=None, help="a DeViSE head mixed into the ConSE space")
    p.add_argument("--head-weight", type=float, default=0.5)
    p.add_argument("--fashion-sample", type=int, default=1000, help="Fashion-MNIST photos in the corpus")
    p.add_argument(
        "--categories", default="", help="only these Tux Paint folders, e.g. food,plants (quick runs)"
    )
    p.add_argument("--no-tags", action="store_true", help="skip the image -> tags measure")
    args = p.parse_args(argv)
    setup = parse_setup(args)
    categories = [c for c in args.categories.split(",") if c]
    ev = Evaluator(args.data_dir, default_corpus(args.fashion_sample, categories))
    try:
        files = {path.stem: load_queries(path) for path in args.queries}
        for qs in files.values():
            ev.corpus.check(qs)
    except (OSError, QueryFileError) as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    name = args.name or f"{args.conse}-{setup.backbone}-{setup.text}" + (
        "-hybrid" if setup.hybrid_fields else ""
    )
    report: dict[str, Any] = {"setup": setup.describe(), "items": len(ev.corpus.keys), "queries": {}}
    md = [f"# Zero-shot evaluation: {name}", "", "```", json.dumps(setup.describe()), "```", ""]
    for stem, qs in files.items():
        means, rows = ev.evaluate(setup, qs)
        report["queries"][stem] = {"count": len(qs), "means": means, "rows": rows}
        print(f"{stem}: {len(qs)} queries  " + "  ".join(f"{k} {v:.3f}" for k, v in means.items()))
        md.append(
            table(
                rows,
                f"{stem} ({len(qs)} queries, worst first): mean P@10 {means['p_at_10']:.3f}, "
                f"nDCG@10 {means['ndcg_at_10']:.3f}, P@10/best {means['p_at_10_normalised']:.3f}",
            )
        )
    if not args.no_tags:
        tag_means, tag_rows = ev.evaluate_tags(setup)
        report["tags"] = {"means": tag_means, "rows": tag_rows}
        print("tags: " + "  ".join(f"{k} {v:.3f}" for k, v in tag_means.items()))
        md.append("### image -> tags (top 5), photos without their name word or parent\n")
        md.extend(
            f"- {r['photo']}: {', '.join(r['tags'])}"
            for r in tag_rows
            if not (r["name_hit"] or r["parent_hit"])
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {args.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
