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


def _on_white(img: Image.Image) -> Image.Image:
    """The documented first step for an image with transparency: composited on white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img


@pytest.mark.parametrize(
    ("mode", "shape"),
    [
        ("RGB", (240, 240)),  # exactly the crop: nothing to do
        ("RGB", (240, 320)),  # short side already right: crop only
        ("RGB", (241, 240)),  # crop only, its offset rounded down
        ("RGB", (300, 200)),  # resize and crop
        ("RGB", (100, 100)),  # upscaled
        ("L", (240, 240)),  # grey, the crop's size: convert only
        ("RGBA", (240, 240)),  # alpha composited on white first
        ("LA", (240, 240)),
        ("P", (240, 240)),  # a palette
        ("CMYK", (240, 240)),
    ],
)
def test_to_pixels_equals_every_step(mode: str, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(7)
    rgba = rng.integers(0, 256, (shape[1], shape[0], 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    img = img if mode == "RGBA" else img.convert("LA") if mode == "LA" else img.convert("RGB").convert(mode)
    got = to_pixels(img, 240)
    want = _every_step(_on_white(img), 240)
    assert got.shape == (240, 240, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert got.flags.writeable and got.flags.owndata  # its own copy, as the batcher and the workers expect


def test_a_palette_with_transparency_is_composited_on_white() -> None:
    img = Image.new("P", (240, 240), 0)
    img.putpalette([0, 0, 0] * 256)
    img.info["transparency"] = 0  # every pixel transparent: the crop is all white
    np.testing.assert_array_equal(to_pixels(img, 240), np.full((240, 240, 3), 255, np.uint8))
