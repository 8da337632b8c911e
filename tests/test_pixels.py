"""The crop a forward sees: ``to_pixels`` skips the steps that would leave an image as it is (a client that
resizes before sending sends exactly the crop), and its pixels equal those of the full path, step for step."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from embedder.image import to_pixels


def _every_step(img: Image.Image, size: int) -> np.ndarray:
    """The documented path with no step skipped: RGB, short side resized to ``size``, centre crop."""
    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.array(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


@pytest.mark.parametrize(
    ("mode", "shape"),
    [
        ("RGB", (240, 240)),  # exactly the crop: nothing to do
        ("RGB", (240, 320)),  # short side already right: crop only
        ("RGB", (300, 200)),  # resize and crop
        ("RGB", (100, 100)),  # upscaled
        ("L", (240, 240)),  # grey, the crop's size: convert only
        ("RGBA", (240, 240)),  # alpha composited on white first
    ],
)
def test_to_pixels_equals_every_step(mode: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    arr = rng.integers(0, 256, (shape[1], shape[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    got = to_pixels(img, 240)
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    want = _every_step(img, 240)
    assert got.shape == (240, 240, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    got[0, 0, 0] ^= 1  # a writable array of its own, as the batcher and the workers expect
