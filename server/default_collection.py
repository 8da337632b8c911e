"""The embedded default collection: the Tux Paint stamp photos plus a balanced Fashion-MNIST sample.

Built once (with a progress bar) and persisted like any collection; at the next start only items that are
missing are embedded, so an interrupted build resumes where it stopped. It is embedded with the server's
backbone and joint space ``conse:minilm`` at the shipped ConSE settings; ``default_collection.json`` in the
data folder records which, and a collection built otherwise (an older version, another ``--backbone``) is
dropped and rebuilt.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from embedder.conse import DEFAULT as CONSE_DEFAULT
from embedder.datasets import FASHION_CLASSES, fashion_mnist, fashion_sample, tuxpaint_photos
from embedder.image import decode_pixels, to_pixels
from server.services import Services
from server.storage import Collection, CollectionSettings

log = logging.getLogger("visionsearch.default")

NAME = "default"
# ConSE needs no training, so the embedded collection can be searched with words from the first start.
# MiniLM class texts carrying their WordNet hypernyms scored best on the tuning queries (training/calibrate).
JOINT = "conse:minilm"
# Payload fields holding text, for hybrid search: the photo's name and Tux Paint's caption.
TEXT_FIELDS = ("label", "caption")
_BATCH = 32

Pending = tuple[str, dict[str, str], Callable[[], np.ndarray]]


def _load_file(path: Path, max_pixels: int, size: int) -> np.ndarray:
    return decode_pixels(path.read_bytes(), max_pixels, size)


def _load_array(pixels: np.ndarray, size: int) -> np.ndarray:
    return to_pixels(Image.fromarray(pixels, "L"), size)


def _stamp_items(max_pixels: int, size: int) -> Iterator[Pending]:
    for photo in tuxpaint_photos():
        payload = {
            "source": "tuxpaint",
            "label": photo.name,
            "caption": photo.caption,
            "category": photo.category,
            "path": str(photo.path),
        }
        yield f"tuxpaint/{photo.id}", payload, functools.partial(_load_file, photo.path, max_pixels, size)


def _fashion_items(sample: int, size: int) -> Iterator[Pending]:
    if sample == 0:
        return
    images, labels = fashion_mnist("test")
    per_class = -(-sample // len(FASHION_CLASSES))
    for i in fashion_sample("test", per_class)[:sample]:
        label = FASHION_CLASSES[labels[i]]
        payload = {"source": "fashion-mnist", "label": label, "category": "clothing", "index": f"test/{i}"}
        yield f"fashion-mnist/test/{i:05d}", payload, functools.partial(_load_array, images[i], size)


def _recipe(services: Services) -> dict[str, object]:
    """What the default collection's vectors depend on; a change means rebuilding it."""
    return {
        "embedder": services.images.model_name,
        "joint": JOINT,
        "conse": CONSE_DEFAULT.text_key(),
        "conse_image": [CONSE_DEFAULT.temperature, CONSE_DEFAULT.top],
    }


def ensure_default_collection(services: Services) -> Collection:
    store = services.store
    embedder = services.images
    size = embedder.default_size
    marker = services.config.data_dir / "default_collection.json"
    recipe = _recipe(services)
    exists = NAME in {c.name for c in store.list()}
    if exists and (not marker.is_file() or json.loads(marker.read_text()) != recipe):
        log.info("the default collection was built with other models or settings: rebuilding it")
        store.drop(NAME)
        exists = False
    if not exists:
        # vector_dtype "": the default graph type of new collections, should it ever grow to need a graph
        store.create(
            CollectionSettings(NAME, embedder.dim, "cosine", embedder.model_name, JOINT, vector_dtype="")
        )
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(recipe))
    collection = store.get_local(NAME)
    wanted = [
        *_stamp_items(services.config.max_pixels, size),
        *_fashion_items(services.config.fashion_sample, size),
    ]
    missing = [p for p in wanted if p[0] not in collection]
    conse = services.joint(JOINT, embedder.model_name)
    if not missing:
        log.info("default collection ready: %d items", len(collection))
        return collection
    log.info(
        "indexing %d photos into the default collection (%d already there)", len(missing), len(collection)
    )
    with tqdm(total=len(missing), desc="indexing default collection", unit="photo") as bar:
        for start in range(0, len(missing), _BATCH):
            batch = missing[start : start + _BATCH]
            features = embedder.embed_pixels(np.stack([load() for _, _, load in batch]))
            joint = collection.prepare_joint(conse.project(features))
            ids, payloads = [b[0] for b in batch], [b[1] for b in batch]
            collection.upsert(ids, collection.prepare_vectors(features), payloads, joint)
            bar.update(len(batch))
    collection.snapshot()
    log.info("default collection ready: %d items", len(collection))
    return collection
