"""params.yaml sections as frozen dataclasses.

Every key is checked against the dataclass: an unknown key, a missing one or a value of the wrong type
raises ParamsError with one line that names the key, the value and what is allowed. Range checks live
next to the fields they guard (`_check` methods), so the rules are visible where the defaults are.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml value that cannot be used; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class DataParams:
    url: str
    md5: str

    def _check(self, where: str) -> None:
        md5 = self.md5.lower()
        if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
            raise ParamsError(f"{where}.md5 = {self.md5!r}: expected 32 hexadecimal digits")


@dataclasses.dataclass(frozen=True)
class NormalizeParams:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _check(self, where: str) -> None:
        if min(self.std) <= 0:
            raise ParamsError(f"{where}.std = {list(self.std)}: every value must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: str = "auto"  # "auto" picks CUDA when present, else CPU; or any torch device string

    def _check(self, where: str) -> None:
        for key, low in (("epochs", 1), ("batch_size", 1)):
            if getattr(self, key) < low:
                raise ParamsError(f"{where}.{key} = {getattr(self, key)}: must be >= {low}")
        if self.lr <= 0:
            raise ParamsError(f"{where}.lr = {self.lr}: must be > 0")


def parse(cls: type, raw: Any, where: str):
    """Build dataclass `cls` from the mapping `raw`; `where` is the key path used in messages."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} = {raw!r}: expected a mapping with keys {_names(cls)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key; allowed keys are {_names(cls)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in raw:
            if field.default is dataclasses.MISSING:
                raise ParamsError(f"{where}.{name}: missing; allowed keys are {_names(cls)}")
            continue
        values[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
    obj = cls(**values)
    if hasattr(obj, "_check"):
        obj._check(where)
    return obj


def load(section: str, cls: type, path: Path = PARAMS_FILE):
    """Read one section of params.yaml into `cls`."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if section not in doc:
        raise ParamsError(f"{path}: section {section!r} is missing")
    return parse(cls, doc[section], section)


def _names(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint (int, float, str, bool, Optional, fixed tuple)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, where)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ParamsError(f"{where} = {value!r}: expected a list of {len(args)} numbers")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    # bool is a subclass of int in Python: `epochs: true` must not pass as 1.
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ParamsError(f"{where} = {value!r}: expected {hint.__name__}")
