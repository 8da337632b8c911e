"""How far tags drawn from ImageNet's WordNet hierarchy can go on the tag evaluation, whatever ranks them.

For each Tux Paint photo of animals, food and plants, a tag hits when it is a word of the photo's name or of
its name's direct WordNet parent (``training.zero_shot.tag_truths``). Tags of the hierarchy mode are the names
of the classes and of the synsets above them. So the share of photos for which *any* of those words, over the
image's ``top`` most probable classes, would hit is an upper bound on what any ranking of them can score:

- over every class (a perfect classifier): the bound set by ImageNet's vocabulary itself;
- over the top 1, 5 and 10 classes of each backbone, and of the four backbones' mean probabilities.

    .venv/bin/python -m training.tag_bound [--data-dir data]

Results: ``bench/results/zero_shot/tag_bound.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from embedder.tags import HierarchyTagger
from training.zero_shot import TagTruth, tag_hits

BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TOPS = (1, 5, 10)


def reachable(tagger: HierarchyTagger, probs: np.ndarray, truth: TagTruth, top: int | None, wn: Any) -> bool:
    """Whether any hierarchy tag over the ``top`` most probable classes (every class when None) hits, by the
    rule of ``score_tags`` (``tag_hits``)."""
    classes = np.arange(probs.shape[0]) if top is None else np.argsort(-probs, kind="stable")[:top]
    nodes = np.flatnonzero(tagger.membership[classes].sum(axis=0) > 0)
    words = sorted({w.lower() for n in nodes for w in (tagger.words[n], *tagger.lemmas[n])})
    return any(tag_hits(truth, words, wn))


def bounds(
    tagger: HierarchyTagger, probs: np.ndarray, truths: Sequence[TagTruth], wn: Any
) -> dict[str, float]:
    n = max(1, len(truths))
    return {
        f"top_{top}": sum(reachable(tagger, p, t, top, wn) for p, t in zip(probs, truths, strict=True)) / n
        for top in TOPS
    }


def main(argv: list[str] | None = None) -> int:
    from training.evaluate import Evaluator, Setup
    from training.zero_shot import default_corpus, score_tags, tag_truths

    p = argparse.ArgumentParser(prog="python -m training.tag_bound", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("bench/results/zero_shot/tag_bound.json"))
    args = p.parse_args(argv)
    ev = Evaluator(args.data_dir, default_corpus(0, ["animals", "food", "plants"]))
    wn = ev.wordnet()
    truths = tag_truths(ev.corpus, wn)
    rows = [t.row for t in truths]

    tagger = HierarchyTagger(ev.taxonomy())
    anything = sum(reachable(tagger, np.ones(tagger.membership.shape[0]), t, None, wn) for t in truths)
    report: dict[str, Any] = {"photos": len(truths), "any_class": anything / max(1, len(truths))}
    print(f"{len(truths)} photos; a hierarchy word hits for {report['any_class']:.3f} over every class")
    probs = {
        b: ev.conse(Setup(backbone=b)).probabilities(ev.features(b)[rows], temperature=1.0) for b in BACKBONES
    }
    probs["mean of the four"] = np.mean(list(probs.values()), axis=0)
    for name, pr in probs.items():
        tags = [[w for w, _ in t] for t in tagger.tags(pr, 5)]
        scored = score_tags(truths, tags, wn)[0]["name_or_parent_in_top5"]
        report[name] = {"hierarchy_tags_top5": scored, **bounds(tagger, pr, truths, wn)}
        r = report[name]
        print(
            f"{name}: hierarchy tags {scored:.3f}; reachable over the top 1 / 5 / 10 classes "
            f"{r['top_1']:.3f} / {r['top_5']:.3f} / {r['top_10']:.3f}",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
