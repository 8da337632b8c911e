"""Calibrate ConSE on the tuning half, then measure every ingredient on both halves:
``python -m training.calibrate``.

1. Grid search on ``training/queries/tuning.jsonl`` only: backbone, text space, hypernym decay, gloss weight,
   temperature, top classes; forward against the reverse direction. The best setting by mean P@10 (nDCG@10
   breaks ties) is what ``embedder.conse.DEFAULT`` and the server's backbone should be.
2. The ablation: from the first version, each ingredient switched on alone, and from the chosen setting each
   switched off, on both halves (the held-out half is scored, never searched over), plus hybrid search.
3. Per backbone: image -> image leave-one-out over the Tux Paint photos (the share of a photo's 10 nearest
   other photos that come from its own folder).

Writes ``calibration.json`` and ``ablation.json`` to ``--out``. Embedding cost is ``bench/backbones.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from embedder.conse import DEFAULT, LEGACY
from training.evaluate import LEGACY_SETUP, Evaluator, Setup
from training.zero_shot import default_corpus, load_queries, unit

# Cheapest first (bench/backbones.py): the default backbone is the cheapest whose best tuning P@10 is within
# TIE of the best backbone's. 0.01 of mean P@10 over 60 queries is 6 relevant photos in 600 slots: a
# difference that small is noise, a 1.5x embedding cost is not.
BACKBONES = ("mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
TIE = 0.01


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best row of the cheapest backbone within ``TIE`` of the best (mean P@10, then nDCG@10)."""
    key = lambda r: (r["p_at_10"], r["ndcg_at_10"])  # noqa: E731
    best = max(rows, key=key)
    for b in BACKBONES:
        mine = [r for r in rows if r["setup"]["backbone"] == b]
        if mine and max(mine, key=key)["p_at_10"] >= best["p_at_10"] - TIE:
            return max(mine, key=key)
    return best


def same_folder_p10(ev: Evaluator, backbone: str) -> dict[str, float]:
    """Leave-one-out over the Tux Paint photos: share of each one's 10 nearest (cosine of backbone features)
    that sit in its own folder, and that share over the best possible (a folder of 4 allows 3 of 10)."""
    n = len(ev.corpus.stamps)
    x = unit(ev.features(backbone)[:n])
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    folders = np.array([str(Path(p.id).parent) for p in ev.corpus.stamps])
    top = np.argsort(-sims, axis=1)[:, :10]
    hits = (folders[top] == folders[:, None]).sum(axis=1)
    others = np.array([(folders == f).sum() - 1 for f in folders])
    has = others > 0
    return {
        "p_at_10": float(np.mean(hits / 10)),
        "p_at_10_normalised": float(np.mean(hits[has] / np.minimum(10, others[has]))),
    }


def grid(
    ev: Evaluator, tune: list[Any], backbones: tuple[str, ...], texts: tuple[str, ...]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for backbone, text in itertools.product(backbones, texts):
        for decay, gloss in itertools.product((0.6, 0.8), (0.0, 0.3)):
            for temperature, top in itertools.product((1.0, 2.0, 3.0), (10, 20, 50)):
                conse = replace(
                    DEFAULT, hypernym_decay=decay, gloss_weight=gloss, temperature=temperature, top=top
                )
                setup = Setup(backbone=backbone, text=text, conse=conse)
                m, _ = ev.evaluate(setup, tune)
                rows.append({"setup": setup.describe(), **m})
                print(f"{backbone:18s} {text:6s} decay {decay} gloss {gloss} T {temperature} top {top:2d}: "
                      f"P@10 {m['p_at_10']:.3f} nDCG {m['ndcg_at_10']:.3f}", flush=True)  # fmt: skip
        best = max((r for r in rows if r["setup"]["backbone"] == backbone and r["setup"]["text"] == text),
                   key=lambda r: (r["p_at_10"], r["ndcg_at_10"]))  # fmt: skip
        for m_classes in (5, 10, 30):
            s = best["setup"]
            conse = replace(DEFAULT, **s["conse"])
            setup = Setup(backbone, text, conse, direction="reverse", reverse_classes=m_classes)
            m, _ = ev.evaluate(setup, tune)
            rows.append({"setup": setup.describe(), **m})
            print(
                f"{backbone:18s} {text:6s} reverse, {m_classes} classes: P@10 {m['p_at_10']:.3f}", flush=True
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("bench/results/zero_shot"))
    p.add_argument("--tuning", type=Path, default=Path("training/queries/tuning.jsonl"))
    p.add_argument("--held-out", type=Path, default=Path("training/queries/held_out.jsonl"))
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--texts", default="spacy,minilm")
    p.add_argument(
        "--skip-grid", action="store_true", help="only the ablation, around embedder.conse.DEFAULT"
    )
    p.add_argument("--backbone", default="", help="with --skip-grid: the chosen backbone")
    args = p.parse_args(argv)
    ev = Evaluator(args.data_dir, default_corpus())
    tune, held = load_queries(args.tuning), load_queries(args.held_out)
    ev.corpus.check(tune + held)
    args.out.mkdir(parents=True, exist_ok=True)
    backbones = tuple(b for b in args.backbones.split(",") if b)
    if args.skip_grid:
        rows = json.loads((args.out / "calibration.json").read_text())["grid"]
    else:
        rows = grid(ev, tune, backbones, tuple(t for t in args.texts.split(",") if t))
    best = max(rows, key=lambda r: (r["p_at_10"], r["ndcg_at_10"]))
    picked = choose(rows)
    calibration = {
        "best": best,
        "chosen": picked,
        "rule": f"cheapest backbone within {TIE} of the best",
        "grid": rows,
    }
    (args.out / "calibration.json").write_text(json.dumps(calibration, indent=1))
    s = picked["setup"]
    chosen = Setup(backbone=s["backbone"], text=s["text"], conse=replace(DEFAULT, **s["conse"]),
                   direction=s["direction"], reverse_classes=s["reverse_classes"])  # fmt: skip
    print(f"best on the tuning half: {json.dumps(best['setup'])}\nchosen: {json.dumps(s)}")

    def both(name: str, setup: Setup) -> dict[str, Any]:
        t, _ = ev.evaluate(setup, tune)
        h, _ = ev.evaluate(setup, held)
        print(f"{name:55s} tuning P@10 {t['p_at_10']:.3f}  held-out P@10 {h['p_at_10']:.3f} "
              f"(nDCG {h['ndcg_at_10']:.3f}, /best {h['p_at_10_normalised']:.3f})", flush=True)  # fmt: skip
        return {"name": name, "setup": setup.describe(), "tuning": t, "held_out": h}

    legacy = replace(LEGACY_SETUP, backbone="mobilenet_v2")
    on = chosen.conse
    ablation = [
        both("first version (today's default, conse:spacy)", legacy),
        both("+ stop words dropped from queries", replace(legacy, drop_stopwords=True)),
        both("+ WordNet names and synonyms (no hypernyms, no gloss)",
             replace(legacy, conse=replace(on, semantics="wordnet", hypernym_weight=0, gloss_weight=0,
                                           temperature=LEGACY.temperature, top=LEGACY.top))),
        both("+ WordNet hypernyms", replace(legacy, conse=replace(on, gloss_weight=0, temperature=1,
                                                                   top=10))),
        both("+ temperature and top classes calibrated", replace(legacy, conse=replace(on, gloss_weight=0))),
        both("+ gloss", replace(legacy, conse=on)),
        both(f"+ MiniLM text (= chosen on {legacy.backbone})", replace(legacy, conse=on, text=chosen.text)),
        both("chosen setting", chosen),
        both("chosen, without hypernyms", replace(chosen, conse=replace(on, hypernym_weight=0))),
        both("chosen, without gloss", replace(chosen, conse=replace(on, gloss_weight=0))),
        both("chosen, plain softmax, top 10", replace(chosen, conse=replace(on, temperature=1, top=10))),
        both("chosen, reverse direction", replace(chosen, direction="reverse")),
        both("chosen, spaCy text", replace(chosen, text="spacy")),
        both("chosen, spaCy text, stop words kept", replace(chosen, text="spacy", drop_stopwords=False)),
    ]  # fmt: skip
    for b in backbones:
        if b != chosen.backbone:
            ablation.append(both(f"chosen, backbone {b}", replace(chosen, backbone=b)))
            ablation.append(both(f"first version, backbone {b}", replace(legacy, backbone=b)))
    ablation.append(
        both("chosen + hybrid BM25 (label, caption)", replace(chosen, hybrid_fields=("label", "caption")))
    )
    ablation.append(both("first version + hybrid BM25", replace(legacy, hybrid_fields=("label", "caption"))))
    image_image = {b: same_folder_p10(ev, b) for b in backbones}
    for b, v in image_image.items():
        print(f"image -> image, same-folder P@10 over the Tux Paint photos, {b}: {v['p_at_10']:.3f} "
              f"(over the best possible: {v['p_at_10_normalised']:.3f})")  # fmt: skip
    tags = {}
    for name, setup in (("first version (nearest words)", legacy), ("hierarchy", chosen)):
        m, _ = ev.evaluate_tags(setup)
        tags[name] = m
        print(f"tags, {name}: " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()))
    report = {
        "chosen": chosen.describe(),
        "default": asdict(DEFAULT),
        "ablation": ablation,
        "image_to_image_same_folder_p10": image_image,
        "tags": tags,
    }
    (args.out / "ablation.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'ablation.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
