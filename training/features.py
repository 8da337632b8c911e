"""Image features computed once and cached on disk, per (backbone, input size, data set, split, count).

Training a head or evaluating a joint space reads features, never pixels: the forward passes are the slow part
(about 280 Fashion-MNIST photos/s at 96 px through MobileNetV2 on two cores), so they are paid once. Loaders
return (S, S, 3) uint8 crops; each backbone normalises them its own way (``ImageEmbedder.embed_pixels``).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from embedder.datasets import StampPhoto, fashion_mnist, tuxpaint_photos
from embedder.image import ImageEmbedder, decode_pixels, to_pixels

log = logging.getLogger("visionsearch.features")
_BATCH = 64


def cached_features(
    path: Path, n: int, load: Callable[[int], np.ndarray], embedder: ImageEmbedder, desc: str
) -> np.ndarray:
    if path.exists():
        return np.load(path)
    out = np.empty((n, embedder.dim), np.float32)
    with tqdm(total=n, desc=desc, unit="img") as bar:
        for start in range(0, n, _BATCH):
            stop = min(n, start + _BATCH)
            out[start:stop] = embedder.embed_pixels(np.stack([load(i) for i in range(start, stop)]))
            bar.update(stop - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def fashion_features(
    embedder: ImageEmbedder, cache_dir: Path, split: str, size: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, 1280), labels (n,))`` of the first ``limit`` photos of a Fashion-MNIST split."""
    images, labels = fashion_mnist(split)
    n = len(images) if limit is None else min(limit, len(images))
    path = cache_dir / f"features-{embedder.model_name}-{size}-fashion-mnist-{split}-{n}.npy"

    def load(i: int) -> np.ndarray:
        return to_pixels(Image.fromarray(images[i], "L"), size)

    return cached_features(path, n, load, embedder, f"features fashion-mnist/{split} @{size}px"), labels[
        :n
    ].copy()


def stamp_features(
    embedder: ImageEmbedder, cache_dir: Path, size: int, photos: Sequence[StampPhoto] | None = None
) -> tuple[np.ndarray, list[StampPhoto]]:
    """Features of the Tux Paint stamp photos, in ``tuxpaint_photos()`` order."""
    photos = list(photos or tuxpaint_photos())
    key = hashlib.sha256("\n".join(p.id for p in photos).encode()).hexdigest()[:12]
    path = cache_dir / f"features-{embedder.model_name}-{size}-tuxpaint-{len(photos)}-{key}.npy"

    def load(i: int) -> np.ndarray:
        return decode_pixels(photos[i].path.read_bytes(), embedder.max_pixels, size)

    return cached_features(path, len(photos), load, embedder, f"features tuxpaint @{size}px"), photos


def fashion_sample_features(
    embedder: ImageEmbedder, cache_dir: Path, split: str, indices: Sequence[int], size: int
) -> np.ndarray:
    """Features of the Fashion-MNIST photos at ``indices`` of a split (the default collection's sample)."""
    images, _ = fashion_mnist(split)
    idx = [int(i) for i in indices]
    key = hashlib.sha256(",".join(map(str, idx)).encode()).hexdigest()[:12]
    path = (
        cache_dir / f"features-{embedder.model_name}-{size}-fashion-mnist-{split}-sample-{len(idx)}-{key}.npy"
    )

    def load(i: int) -> np.ndarray:
        return to_pixels(Image.fromarray(images[idx[i]], "L"), size)

    return cached_features(path, len(idx), load, embedder, f"features fashion-mnist/{split} sample @{size}px")
