"""Trainable or shape-matching parts that feature-based methods put between a student's and a
teacher's tapped layers, built from the layers' traced shapes (without the batch dimension), so a
method works for any pair of models. They train with the student and are never deployed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import ModelError


class FlatMatch(nn.Module):
    """Both maps flattened, the longer average-pooled down to the length of the shorter: in equal
    groups when one length divides the other (the tutorial's 2048 -> 1024, adjacent pairs), else
    adaptively."""

    def __init__(self, student: torch.Size, teacher: torch.Size):
        super().__init__()
        self.length = min(math.prod(student), math.prod(teacher))

    def forward(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _pool_to(torch.flatten(s, 1), self.length), _pool_to(
            torch.flatten(t, 1), self.length
        )


def _pool_to(x: torch.Tensor, length: int) -> torch.Tensor:
    if x.shape[1] == length:
        return x
    if x.shape[1] % length == 0:
        return F.avg_pool1d(x.unsqueeze(1), x.shape[1] // length).squeeze(1)
    return F.adaptive_avg_pool1d(x.unsqueeze(1), length).squeeze(1)


class Resize(nn.Module):
    """A feature map resized to the teacher's height and width: average-pooled when it is larger
    in both, else interpolated bilinearly."""

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] >= self.size[0] and x.shape[-1] >= self.size[1]:
            return F.adaptive_avg_pool2d(x, self.size)
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


def hint_regressor(student: torch.Size, teacher: torch.Size, where: str) -> nn.Module:
    """FitNets' regressor: a 3x3 convolution from the student's channels to the teacher's, then a
    resize when their spatial sizes differ (the tutorial's pair needs none: 16x8x8 -> 32x8x8)."""
    for role, shape in (("student", student), ("teacher", teacher)):
        if len(shape) != 3:
            raise ModelError(f"{where}: the {role} layer gives {_shown(shape)} per image, and a "
                             "regressor needs C x H x W feature maps; tap a convolutional "
                             "layer")  # fmt: skip
    conv = nn.Conv2d(student[0], teacher[0], kernel_size=3, padding=1)
    if student[1:] == teacher[1:]:
        return conv
    return nn.Sequential(conv, Resize(teacher[1:]))


def _shown(shape: torch.Size) -> str:
    return " x ".join(map(str, shape)) or "a scalar"


VID_EPS = 1e-5  # the paper's code: the variance's floor


class VIDHead(nn.Module):
    """VID's predictor of one teacher map from the student's: three 1x1 convolutions (ReLU
    between) to the teacher's channels, after resizing to the teacher's height and width, and a
    learned variance per channel (softplus of a parameter, starting at `init_variance`)."""

    def __init__(self, student: torch.Size, teacher: torch.Size, init_variance: float):
        super().__init__()
        channels = teacher[0]
        self.resize = nn.Identity() if student[1:] == teacher[1:] else Resize(teacher[1:])
        self.mean = nn.Sequential(
            nn.Conv2d(student[0], channels, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 1), nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )  # fmt: skip
        start = math.log(math.expm1(max(init_variance - VID_EPS, VID_EPS)))  # softplus^-1
        self.raw_variance = nn.Parameter(torch.full((channels,), start))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        variance = F.softplus(self.raw_variance) + VID_EPS
        return self.mean(self.resize(x)), variance.view(1, -1, 1, 1)


def vid_heads(students: list[torch.Size], teachers: list[torch.Size],
              init_variance: float) -> nn.ModuleList:  # fmt: skip
    return nn.ModuleList(
        VIDHead(s, t, init_variance) for s, t in zip(students, teachers, strict=True)
    )


def check_maps(shapes: dict[str, torch.Size | list[torch.Size]], where: str, method: str) -> None:
    """ModelError unless every tapped layer (one shape, or a list for a list of layers) gives
    C x H x W feature maps."""
    for key, value in shapes.items():
        for i, shape in enumerate(value if isinstance(value, list) else [value]):
            if len(shape) != 3:
                at = f"{where}.{key}" + (f"[{i}]" if isinstance(value, list) else "")
                raise ModelError(f"{at}: the layer gives {_shown(shape)} per image, and {method} "
                                 "needs C x H x W feature maps; tap a convolutional layer")  # fmt: skip
