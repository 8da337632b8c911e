"""Batch norms folded into the convolutions before them (embedder.backbones): same features, fewer layers."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from embedder.backbones import BACKBONES, _folded, build, fold_batch_norms


def _conv_bn(channels: int = 4) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, channels, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(channels),
        torch.nn.ReLU(),
    )
    bn = net[1]
    assert isinstance(bn, torch.nn.BatchNorm2d)
    with torch.no_grad():  # running statistics far from the identity, so an unfolded norm would show
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    return net.eval()


def test_an_eval_norm_after_a_conv_is_folded_and_the_output_kept() -> None:
    net = _conv_bn()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = net(x)
    assert fold_batch_norms(net) == 1
    assert isinstance(net[1], torch.nn.Identity) and isinstance(net[0], torch.nn.Conv2d)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)


def test_a_norm_in_training_mode_or_not_after_a_conv_is_left_alone() -> None:
    training = _conv_bn().train()
    assert fold_batch_norms(training) == 0 and isinstance(training[1], torch.nn.BatchNorm2d)
    apart = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(), torch.nn.BatchNorm2d(4)).eval()
    assert fold_batch_norms(apart) == 0


class _NormFirst(torch.nn.Module):
    """Registered conv then norm, but the forward normalises first: folding would change its output."""

    def __init__(self) -> None:
        super().__init__()
        seq = _conv_bn(channels=3)
        self.conv, self.norm = seq[0], seq[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def test_a_model_whose_call_order_differs_is_kept_unfolded() -> None:
    model = _NormFirst().eval()
    spec = dataclasses.replace(BACKBONES["mobilenet_v2"], default_size=16)
    assert fold_batch_norms(copy.deepcopy(model)) == 1  # the pair is foldable by registration order...
    assert _folded(model, spec) is model  # ...but the check against the original refuses it
    assert isinstance(model.norm, torch.nn.BatchNorm2d)


def test_mobilenet_is_built_folded_with_the_features_of_the_unfolded_network() -> None:
    torchvision = pytest.importorskip("torchvision", reason="MobileNetV2 is built by torchvision")
    spec = BACKBONES["mobilenet_v2"]
    weights = str(spec.weights())
    features, _ = build(spec, weights)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in features.modules())
    plain = torchvision.models.mobilenet_v2(weights=None)
    plain.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    plain.eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want, got = plain.features(x).numpy(), features(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_the_default_lite_backbone_is_built_folded_with_the_features_of_the_unfolded_network() -> None:
    lite = pytest.importorskip(
        "efficientnet_lite_pytorch", reason="EfficientNet-Lite is built by this package"
    )
    spec = BACKBONES["efficientnet_lite1"]
    weights = str(spec.weights())
    features, classifier = build(spec, weights)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in features.modules())
    plain = lite.EfficientNet.from_name("efficientnet-lite1")
    plain.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    plain.eval()
    # Its padding layers survive the fold (the convolutions keep their classes), and one classifier is held.
    assert {type(m) for m in features.modules()} >= {type(plain._conv_stem)}
    assert classifier is features.net._fc
    x = torch.rand(1, 3, spec.default_size, spec.default_size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want, got = plain.extract_features(x).numpy(), features(x).numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_the_network_runs_channels_last_with_the_features_of_the_nchw_network() -> None:
    torchvision = pytest.importorskip("torchvision", reason="MobileNetV2 is built by torchvision")
    from embedder.image import ImageNetwork, normalize

    spec = BACKBONES["mobilenet_v2"]
    weights = str(spec.weights())
    network = ImageNetwork(weights, "mobilenet_v2")
    convs = [m for m in network.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()  # stored NHWC, not the NCHW torch loads
    plain = torchvision.models.mobilenet_v2(weights=None)
    plain.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    plain.eval()
    crops = np.random.default_rng(4).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    with torch.inference_mode():
        x = torch.from_numpy(np.stack([normalize(c) for c in crops]))  # NCHW, contiguous
        want = torch.nn.functional.adaptive_avg_pool2d(plain.features(x), 1).flatten(1).numpy()
    got = network.forward_pixels(crops)
    assert got.shape == want.shape == (3, 1280) and got.flags.c_contiguous
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(network.forward(x.numpy()), got, rtol=1e-5, atol=1e-5 * np.abs(want).max())
