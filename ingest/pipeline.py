"""The Ray Data pipeline: (id, path, payload) rows -> decoded crops (Ray tasks) -> features (an actor pool).

Both stages run the server's own code: ``decode_pixels`` (the same decode, alpha compositing, resize and crop)
and ``ImageNetwork.forward_pixels`` (the forward the server's embedding worker processes run, normalising in
torch), with the ImageNet MobileNetV2 weights from the same package. So a vector from here equals the server's
Embed of the same file, up to the float noise of a different batch composition.

A file that cannot be read or decoded does not fail its batch: its row carries an error ``kind`` and message
and a zero crop, the actor skips it, and the driver counts and reports it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from embedder.errors import BadImage, EmbedderError, ImageTooLarge
from embedder.image import IMAGE_DIM, ImageNetwork, decode_pixels
from ingest.sources import Photo

# Error kinds a row can carry (the summary groups failures by them).
UNREADABLE = "unreadable"
NOT_AN_IMAGE = "not an image"
TOO_LARGE = "over the pixel limit"
REFUSED_IMAGE = "refused image"  # any other refusal of the embedder's decoder (e.g. its size bounds)


def decode_batch(batch: dict[str, np.ndarray], *, size: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Read and decode a batch of files into (n, size, size, 3) uint8 crops; a bad file gets an error."""
    n = len(batch["id"])
    pixels = np.zeros((n, size, size, 3), np.uint8)
    kinds, errors = [""] * n, [""] * n
    for i, path in enumerate(batch["path"]):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            kinds[i], errors[i] = UNREADABLE, f"{type(e).__name__}: {e.strerror or e}"
            continue
        try:
            pixels[i] = decode_pixels(data, max_pixels, size)
        except ImageTooLarge as e:
            kinds[i], errors[i] = TOO_LARGE, str(e)
        except BadImage as e:
            kinds[i], errors[i] = NOT_AN_IMAGE, str(e)
        except EmbedderError as e:
            kinds[i], errors[i] = REFUSED_IMAGE, str(e)
        except Exception as e:  # one bad file must never stop the job, whatever Pillow raises
            kinds[i], errors[i] = NOT_AN_IMAGE, f"{type(e).__name__}: {str(e)[:200]}"
    return {
        "id": batch["id"],
        "payload": batch["payload"],
        "kind": np.array(kinds, dtype=object),
        "error": np.array(errors, dtype=object),
        "pixels": pixels,
    }


# Images per forward inside an actor. A one-thread forward is fastest on a couple of images at a time: on
# the 2-core development machine two one-thread streams ran 112, 125, 115 and 81 images/s at batches of 1, 2,
# 4 and 8 (bench/results/embed_throughput.json); larger batches spill the activations out of the caches.
FORWARD_BATCH = 2


class EmbedActor:
    """One copy of the network per actor, on one torch thread: on a machine of N cores, N one-thread
    forwards side by side embed more than one N-thread forward (bench/embed_throughput.py)."""

    def __init__(self, forward_batch: int = FORWARD_BATCH, backbone: str = "mobilenet_v2") -> None:
        import torch

        from embedder.backbones import BACKBONES
        from embedder.heap import reuse_freed_memory

        # Forwards reuse their activations, as in the server's workers. Unlike a worker, an actor never trims:
        # it embeds until the job ends, and its memory goes with it.
        reuse_freed_memory()
        torch.set_num_threads(1)
        self.network = ImageNetwork(str(BACKBONES[backbone].weights()), backbone)
        self.forward_batch = forward_batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.flatnonzero(batch["kind"] == "")
        vectors = np.zeros((len(batch["kind"]), IMAGE_DIM), np.float32)
        for start in range(0, len(ok), self.forward_batch):
            rows = ok[start : start + self.forward_batch]
            vectors[rows] = self.network.forward_pixels(batch["pixels"][rows])
        return {k: batch[k] for k in ("id", "payload", "kind", "error")} | {"vector": vectors}


def start_ray(address: str | None, num_cpus: int | None) -> None:
    """Join the cluster at ``address``, or start a local one with ``num_cpus`` (default: every core).

    ``address="local"`` is passed explicitly: Ray's own default would join whatever cluster ``RAY_ADDRESS``
    or the last ``ray start`` on this machine names."""
    import ray

    if ray.is_initialized():
        return
    quiet: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **quiet)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job draws its own bar (tqdm) over images, not blocks
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


def embedded_batches(
    photos: Sequence[Photo],
    *,
    size: int,
    max_pixels: int,
    actors: int,
    batch_size: int,
    forward_batch: int = FORWARD_BATCH,
    backbone: str = "mobilenet_v2",
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``id``, ``payload`` (JSON), ``kind``/``error`` ("" when embedded) and ``vector``, as the
    actors finish them (not in input order). Ray must be started (``start_ray``)."""
    import ray

    if not photos:
        return
    table = pa.table(
        {
            "id": [p.id for p in photos],
            "path": [p.path for p in photos],
            "payload": [json.dumps(p.payload) for p in photos],
        }
    )
    # Blocks of at most a few batches, so both stages stream and the progress bar moves, and of fewer rows
    # for a small job, so that every actor gets blocks.
    rows = max(1, min(batch_size * 4, -(-len(photos) // (2 * actors))))
    blocks = [table.slice(i, rows) for i in range(0, len(photos), rows)]
    ds: ray.data.Dataset = ray.data.from_arrow(blocks)
    # Decoding asks for no CPU slot: the actors hold every slot they need (one per torch thread), and a
    # task that waited for a slot would then wait forever on a cluster the actors fill. It runs between
    # forwards; its concurrency is capped at the number of actors so it cannot flood the cores.
    ds = ds.map_batches(
        decode_batch,  # type: ignore[arg-type]  # Ray's Callable union does not accept keyword arguments
        fn_kwargs={"size": size, "max_pixels": max_pixels},
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=max(1, actors)),
    )
    ds = ds.map_batches(
        EmbedActor,
        fn_constructor_kwargs={"forward_batch": forward_batch, "backbone": backbone},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
