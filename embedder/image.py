"""Images -> 1280-d CNN features (ImageNet weights, global average pool before the classifier): MobileNetV2 by
default, or another backbone of ``embedder.backbones``."""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from embedder.backbones import BACKBONES, backbone_of, build
from embedder.batcher import CallerGone, DynamicBatcher
from embedder.errors import BadImage, ImageBusy, ImageTooLarge
from embedder.workers import ForwardPool

IMAGE_MODEL = "mobilenet_v2"  # the backbone of an ImageEmbedder that names none
IMAGE_DIM = 1280  # every backbone's width
INPUT_SIZES = BACKBONES[IMAGE_MODEL].sizes  # MobileNetV2's ("mobilenet_v2@SIZE")


def embedder_names() -> dict[str, int]:
    """Every image-embedder name a collection may use, with its vector width: each backbone of
    ``embedder.backbones`` at its default input size, and "NAME@SIZE" for the sizes it takes."""
    names = {}
    for b in BACKBONES.values():
        names[b.name] = b.dim
        names |= {f"{b.name}@{s}": b.dim for s in b.sizes}
    return names


def input_size(embedder: str) -> int:
    """The input size an embedder name stands for ("mobilenet_v2@96" -> 96, "efficientnet_lite1" -> 240)."""
    _, _, size = embedder.partition("@")
    return int(size) if size else backbone_of(embedder).default_size


_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
DEFAULT_SIZE = 224
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def decode_image(data: bytes, max_pixels: int, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Decode and ``preprocess`` an encoded image; more than ``max_pixels`` is refused before decoding."""
    return normalize(decode_pixels(data, max_pixels, size))


# The network sees a centre crop of the image resized so that its short side is ``size``: a strip of
# 1 x 30,000 pixels would be resized to 224 x 6.7 M (4.5 GB) first. No photo is that narrow.
MAX_ASPECT = 100


class PixelBudget:
    """Bounds the pixels being decoded at once, across threads: decoding holds several copies of an image
    (decoded, composited on white, converted to RGB), so four concurrent 40-megapixel images would need
    gigabytes. A decode waits for its share; one larger than the whole budget still runs, alone."""

    def __init__(self, pixels: int) -> None:
        self.capacity = pixels
        self._free = pixels
        self._cond = threading.Condition()

    def acquire(self, pixels: int, timeout: float) -> int:
        share = min(pixels, self.capacity)
        with self._cond:
            if not self._cond.wait_for(lambda: self._free >= share, timeout):
                raise ImageBusy(
                    f"the server is decoding {self.capacity - self._free:,} pixels of other images: "
                    "retry shortly"
                )
            self._free -= share
        return share

    def release(self, share: int) -> None:
        with self._cond:
            self._free += share
            self._cond.notify_all()


_UNBOUNDED = PixelBudget(1 << 62)


def decode_pixels(
    data: bytes,
    max_pixels: int,
    size: int = DEFAULT_SIZE,
    budget: PixelBudget = _UNBOUNDED,
    wait_s: float = 30.0,
) -> np.ndarray:
    """Decode an encoded image to its (size, size, 3) uint8 network crop (see ``to_pixels``).

    Width, height and aspect are checked from the header, before any pixel is decoded; the decode then
    waits for its share of ``budget``."""
    if not data:
        raise BadImage("image is empty: send the encoded bytes of a JPEG, PNG, WebP, GIF or BMP file")
    share = 0
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's global one, which is per-process and warns first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_FORMATS)
            w, h = img.size
            if w < 1 or h < 1:
                raise BadImage(f"image is {w}x{h}: it has no pixels")
            if w * h > max_pixels:
                raise ImageTooLarge(
                    f"image is {w}x{h} = {w * h:,} pixels, over this server's limit of {max_pixels:,} "
                    "(VISIONSEARCH_MAX_PIXELS): downscale it before sending"
                )
            if max(w, h) > MAX_ASPECT * min(w, h):
                raise ImageTooLarge(
                    f"image is {w}x{h}, a side more than {MAX_ASPECT} times the other: crop it to the part "
                    "worth searching before sending"
                )
            # A JPEG much larger than the input decodes at 1/2, 1/4 or 1/8 scale (never below ``size``).
            img.draft("RGB", (size, size))
            dw, dh = img.size
            share = budget.acquire(dw * dh, wait_s)
            img.load()
            return to_pixels(img, size)
    except (ImageTooLarge, BadImage, ImageBusy):
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image refused as a decompression bomb: {e}") from None
    except Exception as e:  # Pillow raises many types for corrupt data: UnidentifiedImageError, OSError, ...
        raise BadImage(
            f"image bytes could not be decoded ({type(e).__name__}: {str(e)[:100]}); "
            f"supported formats: {', '.join(_FORMATS)}"
        ) from None
    finally:
        if share:
            budget.release(share)


def preprocess(img: Image.Image, size: int = DEFAULT_SIZE) -> np.ndarray:
    """A decoded image -> (3, size, size) float32 network input: ``to_pixels``, then ``normalize``."""
    return normalize(to_pixels(img, size))


def normalize(pixels: np.ndarray) -> np.ndarray:
    """(size, size, 3) uint8 -> (3, size, size) float32 scaled to [0, 1] and standardised with the ImageNet
    mean and std (``ImageEmbedder`` does the same to a batch in torch, with the same float32 operations)."""
    arr = np.asarray(pixels, dtype=np.float32) / 255.0
    arr = (arr - _MEAN) / _STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_pixels(img: Image.Image, size: int = DEFAULT_SIZE) -> np.ndarray:
    """A decoded image -> its (size, size, 3) uint8 crop: alpha composited on white, short side resized to
    ``size``, centre-cropped."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    # Each step that would leave the image as it is is skipped: Pillow would copy it (a client that resizes
    # before sending, as it should, sends exactly the crop).
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    if (nw, nh) != (size, size):
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)


class ImageNetwork:
    """A backbone's convolutional layers with its ImageNet weights, in this process (``embedder.backbones``;
    MobileNetV2 unless named)."""

    def __init__(self, weights: str, backbone: str = IMAGE_MODEL) -> None:
        spec = BACKBONES[backbone]
        self.features, self.classifier = build(spec, weights)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).reshape(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).reshape(1, 3, 1, 1)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """(m, 3, S, S) normalised float32 -> (m, 1280) features."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            f = self.features(x.contiguous(memory_format=torch.channels_last))
            return torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1).numpy()

    def forward_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(m, S, S, 3) uint8 crops -> features, normalised in torch with ``normalize``'s float32 steps (the
        results are the same bits), a fraction of the cost of doing it image by image in numpy."""
        with torch.inference_mode():
            # (m, S, S, 3) crops seen as (m, 3, S, S) are already channels-last, the network's layout
            # (``embedder.backbones._channels_last``): no transposing copy.
            x = torch.from_numpy(np.require(pixels, np.uint8, ["C", "W"])).permute(0, 3, 1, 2)
            x = x.to(torch.float32).contiguous(memory_format=torch.channels_last)
            x = x.div_(255.0).sub_(self._mean).div_(self._std)
            f = self.features(x)
            return torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1).numpy()


class ImageEmbedder:
    """Feature extractor of one backbone (MobileNetV2 unless named). Thread-safe.

    With ``processes`` > 0 the forwards run in that many worker processes (``ForwardPool``), each on
    ``threads`` torch threads; with 0 they run in this process, ``workers`` side by side (tools and tests).
    Requests of up to ``max_batch`` images share forwards through the ``DynamicBatcher``."""

    def __init__(
        self,
        *,
        threads: int,
        max_pixels: int,
        batch_size: int = 32,
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        max_queue: int = 64,
        workers: int = 1,
        processes: int = 0,
        backbone: str = IMAGE_MODEL,
        decode_budget: int = 0,
    ) -> None:
        torch.set_num_threads(threads)
        spec = BACKBONES[backbone]
        self.model_name = spec.name
        self.dim = spec.dim
        self.default_size = spec.default_size
        self.max_pixels = max_pixels
        self.pixel_budget = PixelBudget(decode_budget or max_pixels)
        self.batch_size = batch_size
        weights = str(spec.weights())
        self.network = ImageNetwork(weights, backbone)
        self.pool = (
            ForwardPool(
                weights,
                processes=processes,
                threads=threads,
                backbone=backbone,
                # the largest batch sent to one worker (a bulk chunk or a dynamic batch) at the default size,
                # the largest any collection of this backbone asks for
                slab_bytes=max(batch_size, max_batch) * self.default_size**2 * 3,
            )
            if processes
            else None
        )
        self._forward_pixels = self.pool.forward if self.pool else self.network.forward_pixels
        self.workers = processes or workers
        self._bulk = ThreadPoolExecutor(self.workers, thread_name_prefix="embed-bulk")
        # Requests of a few images go through the dynamic batcher; bulk ones are batches already.
        self.batcher = DynamicBatcher(
            self._forward_pixels,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            workers=self.workers,
        )

    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """The ImageNet classifier on top of the features: weight (1000, dim) and bias (1000,)."""
        linear = self.network.classifier
        return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()

    def _chunks(self, n: int) -> list[slice]:
        step = max(1, min(self.batch_size, -(-n // self.workers)))
        return [slice(i, i + step) for i in range(0, n, step)]

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(m, 3, S, S) preprocessed images -> (m, 1280) float32 features, in this process."""
        if not len(batch):
            return np.empty((0, self.dim), np.float32)
        out = list(self._bulk.map(lambda c: self.network.forward(batch[c]), self._chunks(len(batch))))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(m, S, S, 3) uint8 crops -> (m, 1280) float32 features, chunks spread over the workers."""
        if not len(pixels):
            return np.empty((0, self.dim), np.float32)
        out = list(self._bulk.map(lambda c: self._forward_pixels(pixels[c]), self._chunks(len(pixels))))
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def embed(
        self,
        images: Sequence[bytes],
        size: int | None = None,
        *,
        deadline: float | None = None,
        cancelled: CallerGone | None = None,
    ) -> np.ndarray:
        """Encoded images -> (m, 1280) float32 features at input ``size``; an undecodable image raises.

        Up to ``max_batch`` images share forwards with other callers' (``DynamicBatcher``): the call may
        raise ``QueueFull`` under overload, ``Expired`` once ``deadline`` (a ``time.monotonic()`` value)
        passes and ``Cancelled`` when ``cancelled`` is set; bigger requests run as their own batches. The
        input size is the backbone's own unless given."""
        size = size or self.default_size
        crops = []
        for n, data in enumerate(images):
            try:
                crops.append(decode_pixels(data, self.max_pixels, size, self.pixel_budget))
            except (BadImage, ImageTooLarge) as e:
                if len(images) > 1:
                    raise type(e)(f"image {n}: {e}") from None
                raise
        if 0 < len(crops) <= self.batcher.max_batch:
            return self.batcher.embed(crops, deadline=deadline, cancelled=cancelled)
        return self.embed_pixels(np.stack(crops) if crops else np.empty((0, size, size, 3), np.uint8))

    def close(self) -> None:
        self.batcher.close()
        self._bulk.shutdown(wait=False)
        if self.pool is not None:
            self.pool.close()
