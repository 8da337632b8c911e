"""Train a DeViSE head: ``python -m training.train --dataset fashion-mnist --holdout sandal,pullover,dress``.

Whole classes can be held out (``--holdout``): their photos are never seen in training, so the evaluation
can measure zero-shot search and tagging on them. Features are computed once per (backbone, size, data set)
and cached under ``DATA_DIR/cache``; the head is written to ``DATA_DIR/heads/NAME.safetensors``, where the
server finds it as the joint space ``head:NAME``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedder.datasets import FASHION_WORDS, STAMP_CATEGORY_WORDS
from embedder.errors import EmbedderError
from embedder.head import HeadMeta, save_head
from embedder.image import ImageEmbedder, decode_pixels
from embedder.joint import JointRegistry
from embedder.words import WordVectors
from training.devise import TrainConfig, train_head
from training.features import cached_features, fashion_features, stamp_features

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


class TrainingDataError(ValueError):
    """Training data that cannot train a head (one class, labels without a text vector, no images)."""


@dataclass
class LabelledFeatures:
    features: np.ndarray
    labels: np.ndarray  # index into words
    words: list[str]  # one label word (or phrase) per class


def fashion_training_set(
    images: ImageEmbedder, cache: Path, size: int, limit: int | None
) -> LabelledFeatures:
    features, labels = fashion_features(images, cache, "train", size, limit)
    return LabelledFeatures(features, labels.astype(np.int64), list(FASHION_WORDS))


def tuxpaint_training_set(images: ImageEmbedder, cache: Path, size: int) -> LabelledFeatures:
    """The stamp photos labelled by their category word (animal, food, plant, vehicle, ...)."""
    features, photos = stamp_features(images, cache, size)
    words = sorted(set(STAMP_CATEGORY_WORDS.values()))
    keep = [i for i, ph in enumerate(photos) if ph.category in STAMP_CATEGORY_WORDS]
    labels = np.array([words.index(STAMP_CATEGORY_WORDS[photos[i].category]) for i in keep], np.int64)
    return LabelledFeatures(features[keep], labels, words)


def folder_training_set(images: ImageEmbedder, cache: Path, size: int, root: Path) -> LabelledFeatures:
    """One sub-folder per class, named by its label; the images inside are its examples."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for n, folder in enumerate(classes):
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(n)
    if not files:
        raise TrainingDataError(f"no images under {root}: expected one sub-folder of images per class")
    key = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()[:12]
    path = cache / f"features-{images.model_name}-{size}-folder-{len(files)}-{key}.npy"
    features = cached_features(
        path,
        len(files),
        lambda i: decode_pixels(files[i].read_bytes(), images.max_pixels, size),
        images,
        "features",
    )
    words = [c.name.replace("_", " ").replace("-", " ") for c in classes]
    return LabelledFeatures(features, np.array(labels, np.int64), words)


def split_held_out(data: LabelledFeatures, held_out: list[str]) -> tuple[LabelledFeatures, list[str]]:
    unknown = [w for w in held_out if w not in data.words]
    if unknown:
        raise TrainingDataError(
            f"--holdout names classes that the data set lacks: {unknown}; it has {data.words}"
        )
    held = {data.words.index(w) for w in held_out}
    seen = [c for c in range(len(data.words)) if c not in held]
    if len(seen) < 2:
        raise TrainingDataError(
            f"training needs at least two classes, got {len(seen)} after holding out {held_out}: "
            "a head cannot learn to tell labels apart from a single one"
        )
    remap = {c: n for n, c in enumerate(seen)}
    keep = np.isin(data.labels, seen)
    labels = np.array([remap[int(c)] for c in data.labels[keep]], np.int64)
    return LabelledFeatures(data.features[keep], labels, [data.words[c] for c in seen]), held_out


def label_vectors(words: list[str], text) -> np.ndarray:  # type: ignore[no-untyped-def]
    missing = [w for w in words if not all(text.known(t) for t in w.split())]
    if missing:
        raise TrainingDataError(
            f"labels without a vector in the {text.name} text space: {missing}; "
            "rename those classes to words the vocabulary holds"
        )
    return text.encode(words)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", default="fashion-mnist", help="fashion-mnist, tuxpaint, or a folder of class sub-folders"
    )
    p.add_argument("--name", default="fashion", help="checkpoint name: DATA_DIR/heads/NAME.safetensors")
    p.add_argument("--data-dir", type=Path, default=Path("data"))
    p.add_argument("--size", type=int, default=96, help="input size in pixels the features are computed at")
    p.add_argument("--text", choices=("spacy", "minilm"), default="spacy")
    p.add_argument("--holdout", default="", help="comma-separated class words never shown in training")
    p.add_argument("--loss", choices=("hinge", "cosine"), default="hinge")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training photos")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import os

    threads = args.threads or os.cpu_count() or 1
    images = ImageEmbedder(threads=threads, max_pixels=40_000_000)
    words = WordVectors()
    text = JointRegistry(images, words, cache_dir=args.data_dir / "cache", threads=threads).text(args.text)
    cache = args.data_dir / "cache"
    try:
        if args.dataset == "fashion-mnist":
            data = fashion_training_set(images, cache, args.size, args.limit)
        elif args.dataset == "tuxpaint":
            data = tuxpaint_training_set(images, cache, args.size)
        else:
            data = folder_training_set(images, cache, args.size, Path(args.dataset))
        held_out = [w.strip() for w in args.holdout.split(",") if w.strip()]
        train, held_out = split_held_out(data, held_out)
        targets = label_vectors(train.words, text)
    except (TrainingDataError, EmbedderError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 2
    config = TrainConfig(loss=args.loss, epochs=args.epochs, seed=args.seed)
    t0 = time.perf_counter()
    with tqdm(total=config.epochs * len(train.labels), desc="training head", unit="img") as bar:

        def progress(n: int, loss: float) -> None:
            bar.update(n)
            bar.set_postfix(loss=f"{loss:.4f}")

        head = train_head(train.features, train.labels, targets, config, progress)
    seconds = time.perf_counter() - t0
    meta = HeadMeta(
        backbone=images.model_name,
        input_size=args.size,
        feature_dim=images.dim,
        text=text.name,
        dim=text.dim,
        hidden=config.hidden,
        loss=config.loss,
        labels=train.words,
        held_out=held_out,
        dataset=args.dataset,
    )
    out = args.data_dir / "heads" / f"{args.name}.safetensors"
    save_head(out, head, meta)
    print(
        f"trained on {len(train.labels)} photos of {len(train.words)} classes in {seconds:.1f}s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
