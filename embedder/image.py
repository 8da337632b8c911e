"""Images -> 1280-d MobileNetV2 features (ImageNet weights, global average pool before the classifier)."""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torchvision
from PIL import Image

from embedder import assets
from embedder.batcher import DynamicBatcher
from embedder.errors import BadImage, ImageTooLarge

IMAGE_MODEL = "mobilenet_v2"
IMAGE_DIM = 1280
# Input sizes a collection may embed at, named "mobilenet_v2@SIZE" (plain "mobilenet_v2" is 224): small
# source photos such as Fashion-MNIST's 28 px ones lose nothing at 96 px and embed five times faster.
INPUT_SIZES = (64, 96, 128, 160, 192, 224)


def embedder_names() -> dict[str, int]:
    """Every image-embedder name a collection may use, with its vector width."""
    return {IMAGE_MODEL: IMAGE_DIM} | {f"{IMAGE_MODEL}@{s}": IMAGE_DIM for s in INPUT_SIZES}


def input_size(embedder: str) -> int:
    """The input size an embedder name stands for ("mobilenet_v2@96" -> 96)."""
    _, _, size = embedder.partition("@")
    return int(size) if size else 224


_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
DEFAULT_SIZE = 224
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def decode_image(data: bytes, max_pixels: int, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Decode and ``preprocess`` an encoded image; more than ``max_pixels`` is refused before decoding."""
    if not data:
        raise BadImage("image is empty: send the encoded bytes of a JPEG, PNG, WebP, GIF or BMP file")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's global one, which is per-process and warns first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLarge(
                    f"image is {w}x{h} = {w * h:,} pixels, over this server's limit of {max_pixels:,} "
                    "(VISIONSEARCH_MAX_PIXELS): downscale it before sending"
                )
            img.load()
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image refused as a decompression bomb: {e}") from None
    except Exception as e:  # Pillow raises many types for corrupt data: UnidentifiedImageError, OSError, ...
        raise BadImage(
            f"image bytes could not be decoded ({type(e).__name__}: {e}); "
            f"supported formats: {', '.join(_FORMATS)}"
        ) from None
    return preprocess(img, size)


def preprocess(img: Image.Image, size: int = DEFAULT_SIZE) -> np.ndarray:
    """A decoded image -> (3, size, size) float32 network input: alpha composited on white, short side
    resized to ``size``, centre-cropped, normalised with the ImageNet mean and std."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - _MEAN) / _STD
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class ImageEmbedder:
    """MobileNetV2 feature extractor. Thread-safe; inference runs under ``torch.inference_mode()``."""

    model_name = IMAGE_MODEL
    dim = IMAGE_DIM

    def __init__(
        self,
        *,
        threads: int,
        max_pixels: int,
        batch_size: int = 32,
        max_batch: int = 16,
        max_wait_s: float = 0.002,
        max_queue: int = 64,
    ) -> None:
        torch.set_num_threads(threads)
        self.max_pixels = max_pixels
        self.batch_size = batch_size
        net = torchvision.models.mobilenet_v2(weights=None)
        state = torch.load(assets.mobilenet_v2_weights(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval()
        self._features = net.features
        self._classifier = net.classifier
        # One forward at a time: torch already uses every configured thread inside one forward.
        self._lock = threading.Lock()
        # Requests of a few images go through the dynamic batcher; bulk ones are batches already.
        self.batcher = DynamicBatcher(
            self.embed_arrays, max_batch=max_batch, max_wait_s=max_wait_s, max_queue=max_queue
        )

    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """The ImageNet classifier on top of the features: weight (1000, 1280) and bias (1000,)."""
        linear = self._classifier[-1]
        return linear.weight.detach().numpy().copy(), linear.bias.detach().numpy().copy()

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """(m, 3, 224, 224) preprocessed images -> (m, 1280) float32 features."""
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(batch), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(batch[i : i + self.batch_size]))
                f = self._features(x)
                out.append(torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1).numpy())
        if not out:
            return np.empty((0, self.dim), np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def embed(
        self,
        images: Sequence[bytes],
        size: int = DEFAULT_SIZE,
        *,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
    ) -> np.ndarray:
        """Encoded images -> (m, 1280) float32 features at input ``size``; an undecodable image raises.

        Up to ``max_batch`` images share forwards with other callers' (``DynamicBatcher``): the call may
        raise ``QueueFull`` under overload, ``Expired`` once ``deadline`` (a ``time.monotonic()`` value)
        passes and ``Cancelled`` when ``cancelled`` is set; bigger requests run as their own batches."""
        arrays = []
        for n, data in enumerate(images):
            try:
                arrays.append(decode_image(data, self.max_pixels, size))
            except (BadImage, ImageTooLarge) as e:
                if len(images) > 1:
                    raise type(e)(f"image {n}: {e}") from None
                raise
        if 0 < len(arrays) <= self.batcher.max_batch:
            return self.batcher.embed(arrays, deadline=deadline, cancelled=cancelled)
        return self.embed_arrays(np.stack(arrays) if arrays else np.empty((0, 3, size, size), np.float32))

    def close(self) -> None:
        self.batcher.close()
