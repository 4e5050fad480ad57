"""Every file a stage reads, read through here, before the stage does any work.

A missing input says which stage makes it; a damaged one (truncated, overwritten, from other
params) names the file and how to get it back: `dvc checkout <file>` restores the cached copy,
`dvc repro -f <stage>` makes it again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
from torch import nn

from pipeline import data, files, models
from pipeline.errors import UserError, one_line
from pipeline.stages import _outputs


class InputError(UserError):
    """An input file is missing or damaged; the message names it and how to restore it."""


@contextlib.contextmanager
def _reading(path: Path, producer: str) -> Iterator[None]:
    if not path.is_file():
        raise InputError(f"{path} is missing; make it with `dvc repro {producer}`")
    try:
        yield
    except MemoryError:
        raise
    except Exception as e:  # whatever a reader raises about a file means the same: it is damaged
        raise InputError(damaged(path, producer, f"{type(e).__name__}: {one_line(e, 200)}")) from e


def damaged(path: Path, producer: str, why: str) -> str:
    return (f"{path} is damaged or out of date ({why}); restore it with `dvc checkout {path}`, "
            f"or make it again with `dvc repro -f {producer}`")  # fmt: skip


def dataset() -> data.Cifar10:
    """data/cifar10.safetensors, checked to hold what the download stage writes."""
    with _reading(_outputs.DATA, "download"):
        return data.load(_outputs.DATA)


def weights(arch: str, role: str) -> nn.Module:
    """The trained network of `role` (teacher-<seed> or <variant>-<seed>)."""
    path = _outputs.model(role)
    with _reading(path, _outputs.stage_of(role)):
        return models.load_weights(arch, path)


def teacher_outputs(seed: int, rows: int) -> models.Outputs:
    """The cached outputs of the teacher of `seed`, which must cover `rows` training images."""
    path, producer = _outputs.teacher_outputs(seed), f"teacher_outputs@{seed}"
    with _reading(path, producer):
        tensors = safetensors.torch.load_file(path)
        out = models.Outputs(tensors["logits"], tensors["features"])
    if len(out.logits) != rows or len(out.features) != rows:
        raise InputError(damaged(path, producer, f"{len(out.logits)} rows for {rows} training "
                                                 "images: made with other params"))  # fmt: skip
    return out


def json_file(path: Path, producer: str, required: tuple[tuple[str, ...], ...] = ()) -> Any:
    """A JSON output of `producer`, which must hold every key path in `required`."""
    with _reading(path, producer):
        doc = json.loads(path.read_text())
    for keys in required:
        node = doc
        for key in keys:
            if not isinstance(node, dict) or key not in node:
                raise InputError(damaged(path, producer, f"no {'.'.join(keys)}"))
            node = node[key]
    return doc


def md5(path: Path, producer: str) -> str:
    """The MD5 of an output of `producer` (a model file, say): what dvc.lock records for it."""
    with _reading(path, producer):
        return files.md5(path.read_bytes())
