"""Every file a stage reads, read through here, before the stage does any work.

A missing input says which stage makes it; a damaged one (truncated, overwritten) names the file
and how to get it back: `dvc checkout <file>` restores the cached copy, `dvc repro -f <stage>`
makes it again. Only what a reader raises about a file's content counts as damage; any other
exception is left to the guard, which reports it as the bug it is.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
from torch import nn

from pipeline import data, files, models
from pipeline.errors import UserError, one_line
from pipeline.params import RoleParams
from pipeline.stages import _outputs

# What the readers raise about a file that is not what it should be: a bad header or missing tensor
# (safetensors), weights of another shape (load_state_dict's RuntimeError), bad JSON or text
# (ValueError), a file the disk cannot read (OSError), a DataError from data.load's checks.
SAFETENSORS = (safetensors.SafetensorError, KeyError, OSError, data.DataError, ValueError)
WEIGHTS = (*SAFETENSORS, RuntimeError)
JSON = (ValueError, OSError)


class InputError(UserError):
    """An input file is missing or damaged; the message names it and how to restore it."""


@contextlib.contextmanager
def _reading(path: Path, producer: str, damage: tuple[type[Exception], ...]) -> Iterator[None]:
    if not path.is_file():
        raise InputError(f"{path} is missing; make it with `dvc repro {producer}`")
    try:
        yield
    except damage as e:
        raise InputError(damaged(path, producer, f"{type(e).__name__}: {one_line(e, 200)}")) from e


def damaged(path: Path, producer: str, why: str) -> str:
    return (f"{path} is damaged ({why}); restore it with `dvc checkout {path}`, or make it again "
            f"with `dvc repro -f {producer}`")  # fmt: skip


def out_of_date(path: Path, producer: str, why: str) -> str:
    return f"{path} is out of date ({why}); make it again with `dvc repro -f {producer}`"


def dataset() -> data.Cifar10:
    """data/cifar10.safetensors, checked to hold what the download stage writes."""
    with _reading(_outputs.DATA, "download", SAFETENSORS):
        return data.load(_outputs.DATA)


def weights(spec: RoleParams, role: str, num_classes: int) -> nn.Module:
    """The trained network of `role` (teacher-<seed> or <variant>-<seed>), a `spec.model`."""
    net = models.build(spec.model, spec.args, num_classes, 0, "model")
    path = _outputs.model(role)
    with _reading(path, _outputs.stage_of(role), WEIGHTS):
        net.load_state_dict(safetensors.torch.load_file(path))
    return net


def teacher_outputs(seed: int, rows: int, layers: list[str]) -> models.Outputs:
    """The cached outputs of the teacher of `seed`, which must cover `rows` training images and
    hold the tapped `layers`."""
    path, producer = _outputs.teacher_outputs(seed), f"teacher_outputs@{seed}"
    with _reading(path, producer, SAFETENSORS):
        tensors = safetensors.torch.load_file(path)
        logits = tensors["logits"]
    missing = [layer for layer in layers if _outputs.LAYER_PREFIX + layer not in tensors]
    if missing:
        raise InputError(out_of_date(path, producer, f"no layer {', '.join(missing)}: made for "
                                                     "other variants"))  # fmt: skip
    out = models.Outputs(logits, {k: tensors[_outputs.LAYER_PREFIX + k] for k in layers})
    if any(len(t) != rows for t in (logits, *out.features.values())):
        raise InputError(out_of_date(path, producer, f"{len(logits)} rows for {rows} training "
                                                     "images: made with other params"))  # fmt: skip
    return out


def json_file(path: Path, producer: str, numbers: tuple[tuple[str, ...], ...] = ()) -> dict:
    """A JSON object written by `producer`, which must hold a number at every key path in
    `numbers` (metrics that were never computed are null, and pass)."""
    with _reading(path, producer, JSON):
        doc = json.loads(path.read_text())
    if not isinstance(doc, dict):
        raise InputError(damaged(path, producer, "not a JSON object"))
    for keys in numbers:
        node: Any = doc
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise InputError(out_of_date(path, producer, f"no {'.'.join(keys)}"))
            node = node[key]
        if node is not None and not _is_number(node):
            raise InputError(damaged(path, producer, f"{'.'.join(keys)} = {node!r}, not a number"))
    return doc


def history(path: Path, producer: str) -> list[dict[str, float]]:
    """The per-epoch record of a training: one object of numbers per epoch, epochs from 1 (none
    for a teacher given by teacher.weights, which was not trained here)."""
    with _reading(path, producer, JSON):
        rows = json.loads(path.read_text())
    epochs_ok = isinstance(rows, list) and all(
        isinstance(r, dict) and r.get("epoch") == i and all(map(_is_number, r.values()))
        for i, r in enumerate(rows, 1))  # fmt: skip
    if not epochs_ok:
        raise InputError(damaged(path, producer, "not one object of numbers per epoch"))
    return rows


def md5(path: Path, producer: str) -> str:
    """The MD5 of an output of `producer` (a model file, say): what dvc.lock records for it."""
    with _reading(path, producer, (OSError,)):
        return files.md5_of_file(path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
