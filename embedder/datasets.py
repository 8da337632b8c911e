"""The real photo sets installed from Debian: Fashion-MNIST and the Tux Paint stamp photos."""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder import assets

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Each class as one plain word of the word-vector table. "tshirt" would be the obvious word for T-shirt/top,
# but spaCy's pruned table maps it onto the vector of "shirt", another class; "tee" is the nearest other word.
FASHION_WORDS = ("tee", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def _read_idx(path: Path) -> np.ndarray:
    # IDX: a big-endian header (zero, zero, type code, number of dimensions, then each size as u32),
    # followed by the raw array. Fashion-MNIST uses type 0x08 (unsigned byte) only.
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, 28, 28) uint8, labels (n,) uint8)`` of the "train" (60,000) or "test" (10,000) split."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = assets.fashion_mnist_dir()
    images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return images, labels


def fashion_sample(split: str, per_class: int) -> list[int]:
    """The first ``per_class`` indices of each class, in index order: a deterministic, balanced sample."""
    _, labels = fashion_mnist(split)
    picked = [np.flatnonzero(labels == c)[:per_class] for c in range(len(FASHION_CLASSES))]
    return sorted(int(i) for i in np.concatenate(picked))


# Tux Paint's top folders as plain words a user would search with.
STAMP_CATEGORY_WORDS = {
    "animals": "animal", "food": "food", "plants": "plant", "vehicles": "vehicle", "clothes": "clothes",
    "household": "household", "space": "space", "sports": "sport", "military": "military",
    "medical": "medicine", "hobbies": "music", "seasonal": "holiday", "town": "building",
}  # fmt: skip


@dataclass(frozen=True)
class StampPhoto:
    path: Path
    id: str  # path below the stamps folder, without extension
    name: str  # e.g. "lion"
    caption: str  # the English description Tux Paint shows, e.g. "Lions live in Africa."
    category: str  # top folder, e.g. "animals"


def tuxpaint_photos() -> list[StampPhoto]:
    """The stamp photos (PNG): cartoons and symbol drawings are left out, as they are not photographs."""
    root = assets.tuxpaint_stamps_dir()
    photos = []
    for path in sorted(root.rglob("*.png")):
        rel = path.relative_to(root)
        if "cartoon" in rel.parts or rel.parts[0] in ("symbols", "cartoon"):
            continue
        caption = ""
        txt = path.with_suffix(".txt")
        if txt.is_file():
            caption = (
                txt.read_text(encoding="utf8", errors="replace").splitlines()[0].strip()
                if txt.stat().st_size
                else ""
            )
        name = re.sub(r"[-_]?\d+$", "", path.stem).replace("_", " ").replace("-", " ").strip()
        photos.append(StampPhoto(path, str(rel.with_suffix("")), name, caption, rel.parts[0]))
    return photos
