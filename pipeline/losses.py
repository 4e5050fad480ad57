"""Distillation methods: one small pure function each, and a plain dict registry from name to method.

A method's loss function takes the student's and the teacher's Outputs (logits, feature map), the
labels, the method's trainable head (or None) and its own keyword parameters from params.yaml, and
returns its named components plus the weighted total under "loss", so every component can be logged.
The training loop knows nothing about any particular method: what a method needs (a teacher, a head)
is declared in its registry entry.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models import Outputs, regressor_head

Terms = dict[str, torch.Tensor]
TOTAL = "loss"


def ce(student: Outputs, teacher: Outputs | None, labels: torch.Tensor, head: None) -> Terms:
    """Cross-entropy alone: the teacher is trained with it, and the plain student baseline."""
    loss = F.cross_entropy(student.logits, labels)
    return {"ce": loss, TOTAL: loss}


def kd(
    student: Outputs,
    teacher: Outputs,
    labels: torch.Tensor,
    head: None,
    *,
    temperature: float,
    distill_weight: float,
    ce_weight: float,
) -> Terms:
    """Hinton et al.: KL(teacher || student) on logits softened by T, scaled by T^2 so its gradient
    keeps the same size whatever T, plus cross-entropy on the labels."""
    log_p_student = F.log_softmax(student.logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.logits / temperature, dim=-1)
    # Log-space KL: the tutorial's softmax().log() gives 0 * -inf = NaN once a probability underflows.
    soft = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    soft = soft * temperature**2
    hard = F.cross_entropy(student.logits, labels)
    return {"ce": hard, "kd": soft, TOTAL: ce_weight * hard + distill_weight * soft}


def cosine(
    student: Outputs,
    teacher: Outputs,
    labels: torch.Tensor,
    head: None,
    *,
    distill_weight: float,
    ce_weight: float,
) -> Terms:
    """Align hidden states: the student's flattened 16x8x8 map (1024) with the teacher's flattened
    32x8x8 map (2048) average-pooled in pairs down to 1024, by cosine embedding loss (target 1)."""
    s = torch.flatten(student.features, 1)
    t = F.avg_pool1d(torch.flatten(teacher.features, 1).unsqueeze(1), 2).squeeze(1)
    target = torch.ones(s.shape[0], device=s.device)
    hidden = F.cosine_embedding_loss(s, t, target)
    hard = F.cross_entropy(student.logits, labels)
    return {"ce": hard, "cosine": hidden, TOTAL: ce_weight * hard + distill_weight * hidden}


def regressor(
    student: Outputs,
    teacher: Outputs,
    labels: torch.Tensor,
    head: nn.Module,
    *,
    distill_weight: float,
    ce_weight: float,
) -> Terms:
    """FitNets-style hint: MSE between the trainable head's map of the student's 16x8x8 features
    (to 32x8x8) and the teacher's 32x8x8 feature map."""
    hint = F.mse_loss(head(student.features), teacher.features)
    hard = F.cross_entropy(student.logits, labels)
    return {"ce": hard, "hint": hint, TOTAL: ce_weight * hard + distill_weight * hint}


@dataclass(frozen=True)
class Method:
    loss: Callable[..., Terms]
    needs_teacher: bool
    make_head: Callable[[], nn.Module] | None = None  # trained with the student, never deployed


METHODS: dict[str, Method] = {
    "ce": Method(ce, needs_teacher=False),
    "kd": Method(kd, needs_teacher=True),
    "cosine": Method(cosine, needs_teacher=True),
    "regressor": Method(regressor, needs_teacher=True, make_head=regressor_head),
}


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(
            f"unknown distillation method {name!r}; valid methods: {', '.join(METHODS)}"
        )
    return METHODS[name]


def bind(name: str, params: Mapping[str, Any], where: str | None = None) -> Callable[..., Terms]:
    """The method's loss with its parameters bound, after checking their names and ranges.

    `where` is the key path of the parameters in messages (e.g. variants.kd); the method's name by
    default."""
    where = where or name
    fn = get(name).loss
    expected = [
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    allowed = ", ".join(expected) or "none"
    for key in params:
        if key not in expected:
            raise ValueError(f"{where}.{key}: method {name!r} takes no such parameter; it takes: "
                             f"{allowed}")  # fmt: skip
    for key in expected:
        if key not in params:
            raise ValueError(f"{where}.{key}: missing; method {name!r} takes: {allowed}")
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}.{key} = {value!r}: expected a number")
        if abs(value) > sys.float_info.max or not math.isfinite(value):  # abs(): ints of any size
            raise ValueError(f"{where}.{key} = {value!r}: expected a finite number")
        if key == "temperature" and value <= 0:
            raise ValueError(f"{where}.{key} = {value}: must be > 0")
        if key.endswith("_weight") and value < 0:
            raise ValueError(f"{where}.{key} = {value}: weights must be >= 0")
    weights = {k: v for k, v in params.items() if k.endswith("_weight")}
    if weights and not any(weights.values()):
        shown = ", ".join(f"{where}.{k} = {v}" for k, v in weights.items())
        raise ValueError(f"{shown}: at least one weight must be > 0, or nothing is learned")
    # As floats: torch takes no Python int beyond 64 bits (10**40 as a weight or temperature).
    return partial(fn, **{k: float(v) for k, v in params.items()})
