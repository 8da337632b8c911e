"""The embedded default collection: the Tux Paint stamp photos plus a balanced Fashion-MNIST sample.

Built once (with a progress bar) and persisted like any collection; at the next start only items that are
missing are embedded, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from embedder.datasets import FASHION_CLASSES, fashion_mnist, fashion_sample, tuxpaint_photos
from embedder.image import decode_image, preprocess
from server.services import Services
from server.storage import Collection, CollectionSettings

log = logging.getLogger("visionsearch.default")

NAME = "default"
# ConSE needs no training, so the embedded collection can be searched with words from the first start.
JOINT = "conse:spacy"
_BATCH = 32

Pending = tuple[str, dict[str, str], Callable[[], np.ndarray]]


def _load_file(path: Path, max_pixels: int) -> np.ndarray:
    return decode_image(path.read_bytes(), max_pixels)


def _load_array(pixels: np.ndarray) -> np.ndarray:
    return preprocess(Image.fromarray(pixels, "L"))


def _stamp_items(max_pixels: int) -> Iterator[Pending]:
    for photo in tuxpaint_photos():
        payload = {
            "source": "tuxpaint",
            "label": photo.name,
            "caption": photo.caption,
            "category": photo.category,
            "path": str(photo.path),
        }
        yield f"tuxpaint/{photo.id}", payload, functools.partial(_load_file, photo.path, max_pixels)


def _fashion_items(sample: int) -> Iterator[Pending]:
    if sample == 0:
        return
    images, labels = fashion_mnist("test")
    per_class = -(-sample // len(FASHION_CLASSES))
    for i in fashion_sample("test", per_class)[:sample]:
        label = FASHION_CLASSES[labels[i]]
        payload = {"source": "fashion-mnist", "label": label, "category": "clothing", "index": f"test/{i}"}
        yield f"fashion-mnist/test/{i:05d}", payload, functools.partial(_load_array, images[i])


def ensure_default_collection(services: Services) -> Collection:
    store = services.store
    embedder = services.images
    if NAME in {c.name for c in store.list()}:
        collection = store.get_local(NAME)
    else:
        store.create(CollectionSettings(NAME, embedder.dim, "cosine", embedder.model_name, JOINT))
        collection = store.get_local(NAME)
    wanted = [
        *_stamp_items(services.config.max_pixels),
        *_fashion_items(services.config.fashion_sample),
    ]
    missing = [p for p in wanted if p[0] not in collection]
    conse = services.joints.get(collection.settings.joint) if collection.settings.joint else None
    if not missing:
        log.info("default collection ready: %d items", len(collection))
        return collection
    log.info(
        "indexing %d photos into the default collection (%d already there)", len(missing), len(collection)
    )
    with tqdm(total=len(missing), desc="indexing default collection", unit="photo") as bar:
        for start in range(0, len(missing), _BATCH):
            batch = missing[start : start + _BATCH]
            features = embedder.embed_arrays(np.stack([load() for _, _, load in batch]))
            joint = collection.prepare_joint(conse.project(features)) if conse else None
            ids, payloads = [b[0] for b in batch], [b[1] for b in batch]
            collection.upsert(ids, collection.prepare_vectors(features), payloads, joint)
            bar.update(len(batch))
    collection.snapshot()
    log.info("default collection ready: %d items", len(collection))
    return collection
