"""What every method's loss shares: its signature's types and how it reports its terms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

Terms = dict[str, torch.Tensor]
TOTAL = "loss"


@dataclass(frozen=True)
class Context:
    """What a loss may need besides the outputs: for warm-ups, memory banks, class-aware terms."""

    epoch: int  # from 1
    indices: torch.Tensor  # the batch's rows in the training set (on the training device)
    num_classes: int
    dataset_size: int  # rows in the training set


def with_labels(logits: torch.Tensor, labels: torch.Tensor, name: str, term: torch.Tensor,
                distill_weight: float, ce_weight: float) -> Terms:  # fmt: skip
    """The method's term `name` and the labels' cross-entropy, each logged, and their weighted sum."""
    hard = F.cross_entropy(logits, labels)
    return {"ce": hard, name: term, TOTAL: ce_weight * hard + distill_weight * term}


def pairs(student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...]):
    return zip(student, teacher, strict=True)
