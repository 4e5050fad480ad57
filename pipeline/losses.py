"""Distillation methods: one small pure function each, and a plain dict registry from name to method.

A method's loss function takes the student's and the teacher's Outputs (logits, tapped layers), the
labels, the method's parts (one module of adapters or heads that trains with the student and is
never deployed; None when it has none), a Context (epoch, the batch's indices, number of classes,
dataset size) and its own keyword parameters from params.yaml. It returns its named components plus
the weighted total under "loss", so every component can be logged. The training loop knows nothing
about any particular method: what a method needs (a teacher, parts) is declared in its registry
entry, and the layers it taps are its parameters named `student_layer` and `teacher_layer`.
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

from pipeline import adapters
from pipeline.models import Outputs

Terms = dict[str, torch.Tensor]
TOTAL = "loss"
LAYER_KEYS = ("student_layer", "teacher_layer")  # the parameters that name tapped layers


@dataclass(frozen=True)
class Context:
    """What a loss may need besides the outputs: for warm-ups, memory banks, class-aware terms."""

    epoch: int  # from 1
    indices: torch.Tensor  # the batch's rows in the training set (on the training device)
    num_classes: int
    dataset_size: int  # rows in the training set


def ce(
    student: Outputs, teacher: Outputs | None, labels: torch.Tensor, parts: None, ctx: Context
) -> Terms:
    """Cross-entropy alone: the teacher is trained with it, and the plain student baseline."""
    loss = F.cross_entropy(student.logits, labels)
    return {"ce": loss, TOTAL: loss}


def kd(
    student: Outputs,
    teacher: Outputs,
    labels: torch.Tensor,
    parts: None,
    ctx: Context,
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
    parts: adapters.FlatMatch,
    ctx: Context,
    *,
    student_layer: str,
    teacher_layer: str,
    distill_weight: float,
    ce_weight: float,
) -> Terms:
    """Align hidden states by cosine embedding loss (target 1): both tapped maps flattened, the
    longer pooled to the shorter's length (the tutorial: LightNN's 16x8x8 = 1024 against DeepNN's
    32x8x8 = 2048, averaged in adjacent pairs)."""
    s, t = parts(student.features[student_layer], teacher.features[teacher_layer])
    target = torch.ones(s.shape[0], device=s.device)
    hidden = F.cosine_embedding_loss(s, t, target)
    hard = F.cross_entropy(student.logits, labels)
    return {"ce": hard, "cosine": hidden, TOTAL: ce_weight * hard + distill_weight * hidden}


def regressor(
    student: Outputs,
    teacher: Outputs,
    labels: torch.Tensor,
    parts: nn.Module,
    ctx: Context,
    *,
    student_layer: str,
    teacher_layer: str,
    distill_weight: float,
    ce_weight: float,
) -> Terms:
    """FitNets-style hint: MSE between the trainable regressor's map of the student's tapped
    features (the tutorial: 16x8x8 to 32x8x8) and the teacher's."""
    hint = F.mse_loss(parts(student.features[student_layer]), teacher.features[teacher_layer])
    hard = F.cross_entropy(student.logits, labels)
    return {"ce": hard, "hint": hint, TOTAL: ce_weight * hard + distill_weight * hint}


# A method's parts are made from the traced shapes of its tapped layers, keyed like its layer
# parameters ("student_layer" -> C x H x W), and the key path of its params, for messages.
MakeParts = Callable[[Mapping[str, torch.Size], str], nn.Module]


@dataclass(frozen=True)
class Method:
    loss: Callable[..., Terms]
    needs_teacher: bool
    make_parts: MakeParts | None = None  # trained with the student, never deployed


METHODS: dict[str, Method] = {
    "ce": Method(ce, needs_teacher=False),
    "kd": Method(kd, needs_teacher=True),
    "cosine": Method(cosine, needs_teacher=True,
                     make_parts=lambda shapes, where: adapters.FlatMatch(
                         shapes["student_layer"], shapes["teacher_layer"])),
    "regressor": Method(regressor, needs_teacher=True,
                        make_parts=lambda shapes, where: adapters.hint_regressor(
                            shapes["student_layer"], shapes["teacher_layer"], where)),
}  # fmt: skip


def layers(name: str) -> tuple[str, ...]:
    """The layer parameters (of LAYER_KEYS) that method `name` takes."""
    return tuple(key for key in LAYER_KEYS if key in _keywords(get(name).loss))


def _keywords(fn: Callable) -> list[str]:
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]


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
    expected = _keywords(fn)
    allowed = ", ".join(expected) or "none"
    for key in params:
        if key not in expected:
            raise ValueError(f"{where}.{key}: method {name!r} takes no such parameter; it takes: "
                             f"{allowed}")  # fmt: skip
    for key in expected:
        if key not in params:
            raise ValueError(f"{where}.{key}: missing; method {name!r} takes: {allowed}")
    for key, value in params.items():
        if key in LAYER_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}.{key} = {value!r}: expected a module path, e.g. layer3")
            continue
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
    return partial(fn, **{k: v if k in LAYER_KEYS else float(v) for k, v in params.items()})
