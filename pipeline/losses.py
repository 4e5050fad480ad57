"""The registry of distillation methods: a plain dict from name to Method, one function each.

A method's loss function (in pipeline/methods/) takes the student's and the teacher's Outputs
(logits, tapped layers), the labels, the method's parts (one module of adapters, heads or memory
that trains with the student and is never deployed; None when it has none), a Context (epoch, the
batch's indices, number of classes, dataset size) and its own keyword parameters from params.yaml.
It returns its named components plus the weighted total under "loss", so every component can be
logged. The training loop knows nothing about any particular method: what a method needs (a
teacher, parts, feature maps) and its parameters (types, ranges, the paper's defaults) are
declared in its registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from pipeline import adapters
from pipeline.methods import contrastive, hints, logits, relations
from pipeline.methods.base import TOTAL, Context, Terms
from pipeline.methods.options import Layers, Number, Option, Switch, check_all, layer_pair, weights

__all__ = ["METHODS", "TOTAL", "Context", "Method", "PartsInput", "Terms", "bind", "get", "layers",
           "make_parts", "resolve", "side_layers", "tapped_paths"]  # fmt: skip

# Every name a layer parameter can have: one layer per side, or a list per side.
LAYER_KEYS = ("student_layer", "teacher_layer", "student_layers", "teacher_layers")


@dataclass(frozen=True)
class PartsInput:
    """What a method's parts are made from: the traced shapes of its tapped layers (C x H x W per
    image), keyed like its layer parameters (a list of shapes for a list of layers), its bound
    parameters, the training set's size (for memory banks) and its key path, for messages."""

    shapes: Mapping[str, torch.Size | list[torch.Size]]
    options: Mapping[str, Any]
    dataset_size: int
    where: str


@dataclass(frozen=True)
class Method:
    loss: Callable[..., Terms]
    options: dict[str, Option] = field(default_factory=dict)
    needs_teacher: bool = True
    make_parts: Callable[[PartsInput], nn.Module] | None = None  # trained with the student
    needs_maps: bool = False  # every tapped layer must give C x H x W feature maps


def _flat_match(i: PartsInput) -> nn.Module:
    return adapters.FlatMatch(i.shapes["student_layer"], i.shapes["teacher_layer"])


def _hint_regressor(i: PartsInput) -> nn.Module:
    return adapters.hint_regressor(i.shapes["student_layer"], i.shapes["teacher_layer"], i.where)


def _vid_heads(i: PartsInput) -> nn.Module:
    return adapters.vid_heads(i.shapes["student_layers"], i.shapes["teacher_layers"],
                              i.options["init_variance"])  # fmt: skip


def _crd_parts(i: PartsInput) -> nn.Module:
    student, teacher = (i.shapes[key].numel() for key in ("student_layer", "teacher_layer"))
    return contrastive.CRDParts(student, teacher, i.options["dim"], i.dataset_size)


TEMPERATURE = Number(4.0, above_low=True)  # the CIFAR-100 setting of KD, DKD and DIST
STANDARDIZE = {"standardize": Switch(False)}
TUTORIAL = weights(ce=0.75, distill=0.25)  # the tutorial's weights for its feature methods
HINT = {**layer_pair(), **TUTORIAL}

# Defaults: each paper's CIFAR-100 setting, as RepDistiller and mdistiller ran it (the tutorial's
# own for cosine and regressor); params.yaml sets the tutorial's kd.
METHODS: dict[str, Method] = {
    "ce": Method(logits.ce, needs_teacher=False),
    "kd": Method(logits.kd, {"temperature": TEMPERATURE, **weights(ce=0.1, distill=0.9),
                             **STANDARDIZE}),
    "dkd": Method(logits.dkd, {"alpha": Number(1.0, weight=True), "beta": Number(8.0, weight=True),
                               "temperature": TEMPERATURE, "warmup": Number(20, integer=True),
                               "ce_weight": Number(1.0, weight=True), **STANDARDIZE}),
    "dist": Method(logits.dist, {"beta": Number(2.0, weight=True), "gamma": Number(2.0, weight=True),
                                 "temperature": TEMPERATURE, **weights(ce=1.0, distill=1.0),
                                 **STANDARDIZE}),
    "cosine": Method(hints.cosine, HINT, make_parts=_flat_match),
    "regressor": Method(hints.regressor, HINT, make_parts=_hint_regressor),
    "fitnets": Method(hints.regressor, HINT, make_parts=_hint_regressor),  # regressor's name in the papers
    "at": Method(hints.at, {**layer_pair(many=True), "p": Number(2.0, above_low=True),
                            **weights(ce=1.0, distill=1000.0)}, needs_maps=True),
    "nst": Method(hints.nst, {**layer_pair(many=True), **weights(ce=1.0, distill=50.0)},
                  needs_maps=True),
    "vid": Method(hints.vid, {**layer_pair(many=True), "init_variance": Number(5.0, above_low=True),
                              **weights(ce=1.0, distill=1.0)}, make_parts=_vid_heads,
                  needs_maps=True),
    "sp": Method(relations.sp, {**layer_pair(), **weights(ce=1.0, distill=3000.0)}),
    "pkt": Method(relations.pkt, {**layer_pair(), **weights(ce=1.0, distill=30000.0)}),
    "rkd": Method(relations.rkd, {**layer_pair(), "distance_weight": Number(25.0, weight=True),
                                  "angle_weight": Number(50.0, weight=True),
                                  "ce_weight": Number(1.0, weight=True)}),
    "crd": Method(contrastive.crd, {**layer_pair(), "dim": Number(128, low=1, high=65536, integer=True),
                                    "negatives": Number(16384, low=1, high=10**7, integer=True),
                                    "temperature": Number(0.07, above_low=True),
                                    "momentum": Number(0.5, high=1.0),
                                    **weights(ce=1.0, distill=0.8)}, make_parts=_crd_parts),
}  # fmt: skip


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(
            f"unknown distillation method {name!r}; valid methods: {', '.join(METHODS)}"
        )
    return METHODS[name]


def layers(name: str) -> tuple[str, ...]:
    """The layer parameters (of LAYER_KEYS) that method `name` takes."""
    return tuple(key for key, o in get(name).options.items() if isinstance(o, Layers))


def many_layers(name: str, key: str) -> bool:
    """Whether layer parameter `key` of method `name` is a list of layers."""
    return get(name).options[key].many


def side_layers(name: str, options: Mapping[str, Any], side: str) -> dict[str, Any]:
    """The layer parameters of method `name` on one side ("student" or "teacher") and their values
    in the bound `options`: a module path, or a tuple of them."""
    return {key: options[key] for key in layers(name) if key.startswith(side)}


def tapped_paths(name: str, options: Mapping[str, Any], side: str) -> list[str]:
    """The module paths method `name` taps on one side, its lists flattened, in order."""
    values = side_layers(name, options, side).values()
    return [path for v in values for path in ((v,) if isinstance(v, str) else v)]


def make_parts(name: str, options: Mapping[str, Any],
               shapes: Mapping[str, torch.Size | list[torch.Size]], dataset_size: int,
               where: str) -> nn.Module | None:  # fmt: skip
    """The method's parts for the traced `shapes` of its layer parameters (None when it has none),
    after checking they are feature maps where the method compares maps (ModelError naming the key)."""
    method = get(name)
    if method.needs_maps:
        adapters.check_maps(dict(shapes), where, name)
    if method.make_parts is None:
        return None
    return method.make_parts(PartsInput(shapes, options, dataset_size, where))


def resolve(name: str, params: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """The method's parameters, checked against its declaration (ValueError naming the key, the
    value and what is allowed) with its defaults filled in. `where` is their key path in messages
    (e.g. variants.kd); the method's name by default."""
    return check_all(get(name).options, params, name, where or name)


def bind(name: str, params: Mapping[str, Any], where: str | None = None) -> Callable[..., Terms]:
    """The method's loss with its parameters (see resolve) bound."""
    return partial(get(name).loss, **resolve(name, params, where))
