"""atheris target: image decoding (embedder.image.decode_pixels) on arbitrary bytes.

Every input either becomes a (64, 64, 3) uint8 crop or is refused with BadImage / ImageTooLarge; any other
exception, a crash, or memory over libFuzzer's -rss_limit_mb is a finding. Run by tests/test_fuzz.py (60 s in
CI) and `make fuzz` (longer): ``python tests/fuzz/fuzz_images.py CORPUS_DIR -max_total_time=60``.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["embedder.image", "PIL"]):
    import numpy as np
    from PIL import Image

    from embedder.errors import BadImage, ImageTooLarge
    from embedder.image import decode_pixels

MAX_PIXELS = 4_000_000


def seeds(folder: Path) -> None:
    """Small valid images of every accepted format, so the fuzzer starts past the magic numbers."""
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGBA", (7, 5), (200, 30, 60, 128))
    for fmt, mode in (("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGBA")):
        buf = io.BytesIO()
        img.convert(mode).save(buf, fmt)
        (folder / f"seed.{fmt.lower()}").write_bytes(buf.getvalue())


def TestOneInput(data: bytes) -> None:
    try:
        crop = decode_pixels(data, MAX_PIXELS, 64)
    except (BadImage, ImageTooLarge):
        return
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus:
        seeds(Path(corpus[0]))
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
