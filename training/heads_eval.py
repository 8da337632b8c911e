"""Evaluate joint spaces: ``python -m training.evaluate --head data/heads/fashion.safetensors``.

Fashion-MNIST (10,000 test photos): word -> image precision@10 for the seen and the held-out classes, top-5
tag accuracy over the whole tagging vocabulary, and zero-shot top-1 accuracy among the ten class words, for
ConSE and for the trained head side by side. Tux Paint (the stamp photos): category word -> image P@10,
top-5 tag accuracy of each photo's name, and caption -> image recall@10, for ConSE. Writes JSON and PNGs
(a bar chart of the scores and 2-D PCA maps of the embeddings with thumbnails) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from embedder.conse import DEFAULT, LEGACY, ConSE
from embedder.datasets import FASHION_CLASSES, FASHION_WORDS, STAMP_CATEGORY_WORDS, fashion_mnist
from embedder.head import HeadSpace, read_meta
from embedder.image import ImageEmbedder
from embedder.joint import HEAD_CONSE_WEIGHT, JointRegistry, mix_head_conse
from embedder.text import TextSpace
from embedder.words import WordVectors
from kernels import topk_inner_product
from training.features import fashion_features, stamp_features


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(n == 0, 1, n), dtype=np.float32)


def precision_at_k(
    joint: np.ndarray, queries: np.ndarray, relevant: list[np.ndarray], k: int = 10
) -> list[float]:
    """For each query vector, the fraction of its top-k items that are relevant."""
    _, rows = topk_inner_product(_unit(joint), _unit(queries), k)
    return [float(np.isin(r, rel).mean()) for r, rel in zip(rows, relevant, strict=True)]


def tag_accuracy(
    joint: np.ndarray, vocab_words: list[str], vocab: np.ndarray, truth: list[str], k: int = 5
) -> float:
    _, rows = topk_inner_product(vocab, _unit(joint), k)
    return float(np.mean([t in {vocab_words[r] for r in row} for row, t in zip(rows, truth, strict=True)]))


def fashion_scores(
    joint: np.ndarray, labels: np.ndarray, text: TextSpace, held_out: list[str]
) -> dict[str, Any]:
    class_vecs = text.encode(list(FASHION_WORDS))
    p10 = precision_at_k(joint, class_vecs, [np.flatnonzero(labels == c) for c in range(10)])
    held = [FASHION_WORDS.index(w) for w in held_out]
    seen = [c for c in range(10) if c not in held]
    vocab_words, vocab = text.vocabulary()
    truth = [FASHION_WORDS[c] for c in labels]
    predicted = np.argmax(_unit(joint) @ _unit(class_vecs).T, axis=1)
    in_held = np.isin(labels, held)
    held_rows = np.flatnonzero(in_held)
    held_tags = (
        tag_accuracy(joint[in_held], vocab_words, vocab, [truth[i] for i in held_rows]) if held else None
    )
    return {
        "p_at_10": dict(zip(FASHION_WORDS, p10, strict=True)),
        "p_at_10_seen": float(np.mean([p10[c] for c in seen])),
        "p_at_10_held_out": float(np.mean([p10[c] for c in held])) if held else None,
        "tag_top5_accuracy": tag_accuracy(joint, vocab_words, vocab, truth),
        "tag_top5_accuracy_held_out": held_tags,
        "zero_shot_top1_among_classes": float(np.mean(predicted == labels)),
        "zero_shot_top1_held_out": float(np.mean(predicted[in_held] == labels[in_held])) if held else None,
    }  # fmt: skip


def stamp_scores(
    joint: np.ndarray, photos: list[Any], text: TextSpace, held_out: list[str]
) -> dict[str, Any]:
    """Category word -> photo P@10 (seen and held-out categories) and top-5 tag accuracy of photo names."""
    cats = [STAMP_CATEGORY_WORDS.get(ph.category) for ph in photos]
    words = sorted({c for c in cats if c})
    relevant = [np.array([i for i, c in enumerate(cats) if c == w]) for w in words]
    p10 = dict(zip(words, precision_at_k(joint, text.encode(words), relevant), strict=True))
    vocab_words, vocab = text.vocabulary()
    # A photo's name is its file name ("adelaide rosella"); its last word is the noun to expect as a tag.
    vocab_set = set(vocab_words)
    last_words = [(ph.name.split() or [""])[-1].lower() for ph in photos]
    named = [(i, w) for i, w in enumerate(last_words) if w in vocab_set]
    seen = [w for w in words if w not in held_out]
    return {
        "p_at_10": p10,
        "p_at_10_seen": float(np.mean([p10[w] for w in seen])),
        "p_at_10_held_out": float(np.mean([p10[w] for w in held_out])) if held_out else None,
        "tag_top5_accuracy": tag_accuracy(
            joint[[i for i, _ in named]], vocab_words, vocab, [w for _, w in named]
        ),
        "named_photos": len(named),
    }


def plot_scores(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {
        "p_at_10_seen": "P@10 seen classes",
        "p_at_10_held_out": "P@10 held-out classes",
        "tag_top5_accuracy": "top-5 tag accuracy",
        "zero_shot_top1_among_classes": "top-1 among the classes",
    }
    metrics = [m for m in names if any(m in r for r in results.values())]
    labels = [names[m] for m in metrics]
    methods = list(results)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(methods)
    for n, m in enumerate(methods):
        vals = [results[m].get(k) or 0.0 for k in metrics]
        bars = ax.bar(np.arange(len(metrics)) + n * width, vals, width, label=m)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance (P@10, top-1)")
    ax.set_xticks(np.arange(len(metrics)) + width * (len(methods) - 1) / 2, labels)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{title}: words -> images and images -> words")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_map(joint: np.ndarray, thumbs: list[np.ndarray], names: list[str], title: str, path: Path) -> None:
    """2-D PCA of the embeddings, each point drawn as its photo, coloured frame by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    x = _unit(joint) - _unit(joint).mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    classes = sorted(set(names))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(13, 11))
    for c in classes:
        idx = [i for i, n in enumerate(names) if n == c]
        ax.scatter(xy[idx, 0], xy[idx, 1], s=8, color=colours(classes.index(c) % 20), label=c)
    for i, thumb in enumerate(thumbs):
        box = AnnotationBbox(
            OffsetImage(thumb, zoom=0.9, cmap="gray"), xy[i], frameon=True, pad=0.05,
            bboxprops={"edgecolor": colours(classes.index(names[i]) % 20), "linewidth": 1.2},
        )  # fmt: skip
        ax.add_artist(box)
    ax.legend(markerscale=3, fontsize=9, loc="best")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--head", type=Path, default=Path("data/heads/fashion.safetensors"))
    p.add_argument("--tuxpaint-head", type=Path, default=Path("data/heads/tuxpaint.safetensors"))
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("bench/results/joint"))
    p.add_argument(
        "--limit", type=int, default=None, help="evaluate on the first N Fashion-MNIST test photos"
    )
    args = p.parse_args(argv)
    threads = os.cpu_count() or 1
    args.out.mkdir(parents=True, exist_ok=True)
    images = ImageEmbedder(threads=threads, max_pixels=40_000_000)
    registry = JointRegistry(images, WordVectors(), cache_dir=args.data_dir / "cache", threads=threads)
    meta = read_meta(args.head)
    text = registry.text(meta.text)
    head = HeadSpace(args.head.stem, args.head, text, images.model_name, images.dim)
    cache = args.data_dir / "cache"
    taxonomy = registry.taxonomy()
    classifier = images.classifier()
    legacy = ConSE(classifier, text, taxonomy, LEGACY, cache_dir=cache)
    conse = ConSE(classifier, text, taxonomy, DEFAULT, cache_dir=cache)

    features, labels = fashion_features(images, cache, "test", meta.input_size, args.limit)
    joint = {
        "ConSE, first version (no training)": legacy.project(features),
        "ConSE, WordNet (no training)": conse.project(features),
        f"DeViSE head ({meta.loss} loss)": head.project(features),
        f"DeViSE head + WordNet ConSE ({HEAD_CONSE_WEIGHT:g}/{1 - HEAD_CONSE_WEIGHT:g})": mix_head_conse(
            head.project(features), conse.project(features)
        ),
    }
    fashion = {name: fashion_scores(j, labels, text, meta.held_out) for name, j in joint.items()}
    report: dict[str, Any] = {
        "fashion_mnist": {
            "photos": len(labels), "input_size": meta.input_size, "text_space": meta.text,
            "class_words": dict(zip(FASHION_CLASSES, FASHION_WORDS, strict=True)),
            "held_out": meta.held_out, "results": fashion,
        }
    }  # fmt: skip
    plot_scores(fashion, args.out / "fashion_scores.png", "Fashion-MNIST test set")
    imgs, _ = fashion_mnist("test")
    sample = np.random.default_rng(0).choice(len(labels), size=min(300, len(labels)), replace=False)
    names = [
        FASHION_WORDS[c] + (" (held out)" if FASHION_WORDS[c] in meta.held_out else "")
        for c in labels[sample]
    ]
    head_name = next(k for k in joint if k.startswith("DeViSE"))
    title = "Fashion-MNIST test photos in the trained head's joint space (PCA)"
    thumbs_f = [255 - imgs[i] for i in sample]
    plot_map(joint[head_name][sample], thumbs_f, names, title, args.out / "fashion_map.png")

    spacy = registry.text("spacy")
    stamp_feats, photos = stamp_features(images, cache, 224)
    stamp_joint = {
        "ConSE, first version (no training)": ConSE(
            classifier, spacy, taxonomy, LEGACY, cache_dir=cache
        ).project(stamp_feats),
        "ConSE, WordNet (no training)": ConSE(classifier, spacy, taxonomy, DEFAULT, cache_dir=cache).project(
            stamp_feats
        ),
    }
    stamp_held: list[str] = []
    if args.tuxpaint_head.is_file():
        stamp_head = HeadSpace(
            args.tuxpaint_head.stem, args.tuxpaint_head, spacy, images.model_name, images.dim
        )
        stamp_held = stamp_head.meta.held_out
        stamp_joint[f"DeViSE head ({stamp_head.meta.loss} loss)"] = stamp_head.project(stamp_feats)
        stamp_joint[f"DeViSE head + WordNet ConSE ({HEAD_CONSE_WEIGHT:g}/{1 - HEAD_CONSE_WEIGHT:g})"] = (
            mix_head_conse(stamp_head.project(stamp_feats), stamp_joint["ConSE, WordNet (no training)"])
        )
    minilm = registry.text("minilm")
    captioned = [(i, ph.caption) for i, ph in enumerate(photos) if ph.caption]
    stamp_minilm = ConSE(classifier, minilm, taxonomy, DEFAULT, cache_dir=cache).project(stamp_feats)
    _, rows = topk_inner_product(_unit(stamp_minilm), minilm.encode([c for _, c in captioned]), 10)
    recall = float(np.mean([i in row for (i, _), row in zip(captioned, rows, strict=True)]))
    report["tuxpaint"] = {
        "photos": len(photos), "held_out_categories": stamp_held,
        "note": "Tux Paint is too small to split: a head's seen-category scores are on its training photos",
        "results": {name: stamp_scores(j, photos, spacy, stamp_held) for name, j in stamp_joint.items()},
        "conse_minilm_caption_recall_at_10": recall, "captioned_photos": len(captioned),
    }  # fmt: skip
    plot_scores(report["tuxpaint"]["results"], args.out / "tuxpaint_scores.png", "Tux Paint stamp photos")
    from PIL import Image

    thumbs = []
    for ph in photos:
        im = Image.open(ph.path).convert("RGBA")
        im.thumbnail((40, 40))
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        thumbs.append(np.asarray(Image.alpha_composite(bg, im).convert("RGB")))
    title = "Tux Paint stamp photos in the ConSE joint space (spaCy words, PCA)"
    plot_map(
        stamp_joint["ConSE, WordNet (no training)"],
        thumbs,
        [ph.category for ph in photos],
        title,
        args.out / "tuxpaint_map.png",
    )
    (args.out / "joint_eval.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
