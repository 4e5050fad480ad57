"""The tutorial's teacher (DeepNN) and student (LightNN), plus the regressor's training-time head.

Each network returns (logits, feature_map), where feature_map is the output of its conv stack
(DeepNN: 32 x 8 x 8, LightNN: 16 x 8 x 8). Every distillation method derives what it needs from
that pair, so no variant needs a copied model class or a forward hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import safetensors.torch
import torch
from torch import nn


class Outputs(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor  # the conv stack's output, N x C x 8 x 8


class _ConvNet(nn.Module):
    def __init__(self, features: nn.Sequential, flat: int, hidden: int, num_classes: int):
        super().__init__()
        self.features = features
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.1), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> Outputs:
        features = self.features(x)
        return Outputs(self.classifier(torch.flatten(features, 1)), features)


class DeepNN(_ConvNet):
    """Teacher: 1,186,986 parameters."""

    def __init__(self, num_classes: int = 10):
        features = nn.Sequential(
            nn.Conv2d(3, 128, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(128, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(64, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        super().__init__(features, flat=2048, hidden=512, num_classes=num_classes)


class LightNN(_ConvNet):
    """Student: 267,738 parameters."""

    def __init__(self, num_classes: int = 10):
        features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(16, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        )
        super().__init__(features, flat=1024, hidden=256, num_classes=num_classes)


def regressor_head() -> nn.Module:
    """FitNets-style hint regressor: maps the student's 16 x 8 x 8 map onto the teacher's 32 x 8 x 8.

    It is trained with the student but is not part of the deployed student.
    """
    return nn.Conv2d(16, 32, kernel_size=3, padding=1)


ARCHITECTURES = {"DeepNN": DeepNN, "LightNN": LightNN}


def build(arch: str, seed: int) -> nn.Module:
    """A freshly initialised network; the same seed gives the same initial weights."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)  # as the tutorial does before each model
    return ARCHITECTURES[arch]()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Classifier(nn.Module):
    """What gets deployed: raw uint8 pixels (N x 3 x 32 x 32) in, logits out.

    It carries its own normalisation, so a user of the logged model needs no preprocessing code.
    """

    def __init__(self, net: nn.Module, normalize: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images)).logits


def weights_bytes(net: nn.Module) -> bytes:
    """Weights as safetensors: the same weights give the same bytes (a stable DVC hash)."""
    return safetensors.torch.save({k: v.contiguous() for k, v in net.state_dict().items()})


def load_weights(arch: str, path: Path) -> nn.Module:
    net = ARCHITECTURES[arch]()
    net.load_state_dict(safetensors.torch.load_file(path))
    return net
