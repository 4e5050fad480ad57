"""Model evaluation as plain values: no I/O, no tracking."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


@torch.no_grad()
def predict(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits for uint8 `images` (on the model's device), in eval mode, batch by batch.

    Inputs go in channels_last, the faster layout for these convolutions on CPU and GPU."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat(
            [
                model(normalize(chunk).contiguous(memory_format=torch.channels_last)).logits
                for chunk in images.split(batch_size)
            ]
        )
    finally:
        model.train(was_training)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max is the label (0.0 to 1.0)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return (logits.argmax(dim=1) == labels).float().mean().item()


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of rows where both sets of logits pick the same class (top-1 agreement)."""
    return (logits.argmax(dim=1) == reference.argmax(dim=1)).float().mean().item()
