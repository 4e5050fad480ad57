"""What a distillation method's parameters are: each one declared with its type, range and the
paper's default, so params.yaml is checked against the method itself and every message names the
key, the value and what is allowed.

A variant may leave out any number or switch (the default applies, and is logged with the run);
layers have no default here: params.py fills them in from the models' defaults (models.DEFAULT_LAYERS).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SIDES = ("student", "teacher")


class OptionError(ValueError):
    """A variant's parameter that its method does not accept (the message names it)."""


@dataclass(frozen=True)
class Number:
    """A real number (or an integer) in [low, high]; `above_low`: low itself is excluded."""

    default: float
    low: float = 0.0
    high: float = math.inf
    above_low: bool = False
    integer: bool = False
    weight: bool = False  # a loss weight: at least one of a method's weights must be > 0

    def check(self, value: Any, where: str) -> float | int:
        kind = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OptionError(f"{where} = {value!r}: expected {kind}")
        if self.integer and not isinstance(value, int) and not float(value).is_integer():
            raise OptionError(f"{where} = {value!r}: expected an integer")
        if abs(value) > sys.float_info.max or not math.isfinite(value):  # abs(): ints of any size
            raise OptionError(f"{where} = {value!r}: expected a finite number")
        if value < self.low or (self.above_low and value == self.low) or value > self.high:
            raise OptionError(f"{where} = {value!r}: must be {self.range()}")
        # As floats: torch takes no Python int beyond 64 bits (10**40 as a weight or temperature).
        return int(value) if self.integer else float(value)

    def range(self) -> str:
        low = f"> {self.low:g}" if self.above_low else f">= {self.low:g}"
        return low if self.high == math.inf else f"{low} and <= {self.high:g}"


@dataclass(frozen=True)
class Switch:
    default: bool

    def check(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise OptionError(f"{where} = {value!r}: expected true or false")
        return value


@dataclass(frozen=True)
class Layers:
    """Module paths on one side: one (`student_layer`) or, with `many`, a list (`student_layers`)
    whose entries pair with the other side's list in order."""

    side: str
    many: bool = False

    def check(self, value: Any, where: str) -> str | tuple[str, ...]:
        if not self.many:
            return _module_path(value, where)
        if isinstance(value, str):  # one layer written without brackets
            value = [value]
        if not isinstance(value, list | tuple) or not value:
            raise OptionError(f"{where} = {value!r}: expected a list of module paths, e.g. "
                              "[layer2, layer3]")  # fmt: skip
        return tuple(_module_path(v, f"{where}[{i}]") for i, v in enumerate(value))


def _module_path(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OptionError(f"{where} = {value!r}: expected a module path, e.g. layer3")
    return value


Option = Number | Switch | Layers


def check_all(options: Mapping[str, Option], given: Mapping[str, Any], method: str,
              where: str) -> dict[str, Any]:  # fmt: skip
    """The method's parameters: `given` checked, defaults filled in, in the method's order."""
    allowed = ", ".join(options) or "none"
    for key in given:
        if key not in options:
            raise OptionError(f"{where}.{key}: method {method!r} takes no such parameter; it "
                              f"takes: {allowed}")  # fmt: skip
    values = {}
    for key, option in options.items():
        if key in given:
            values[key] = option.check(given[key], f"{where}.{key}")
        elif isinstance(option, Layers):
            raise OptionError(f"{where}.{key}: missing; method {method!r} takes: {allowed}")
        else:
            values[key] = option.default
    _check_pairs(options, values, where)
    _check_weights(options, values, given, where)
    return values


def _check_pairs(options: Mapping[str, Option], values: Mapping[str, Any], where: str) -> None:
    lists = {key: values[key] for key, o in options.items() if isinstance(o, Layers) and o.many}
    if len({len(v) for v in lists.values()}) > 1:
        shown = ", ".join(f"{where}.{k} has {len(v)}" for k, v in lists.items())
        raise OptionError(f"{shown}: the lists pair layer by layer, so they need the same length")


def _check_weights(options: Mapping[str, Option], values: Mapping[str, Any],
                   given: Mapping[str, Any], where: str) -> None:  # fmt: skip
    weights = {k: values[k] for k, o in options.items() if isinstance(o, Number) and o.weight}
    if weights and not any(weights.values()):
        shown = ", ".join(f"{where}.{k} = {given.get(k, v)!r}" for k, v in weights.items())
        raise OptionError(f"{shown}: at least one weight must be > 0, or nothing is learned")


def weights(ce: float, distill: float) -> dict[str, Number]:
    """The two weights nearly every method has: its distillation term's and the labels' CE."""
    return {"distill_weight": Number(distill, weight=True), "ce_weight": Number(ce, weight=True)}


def layer_pair(many: bool = False) -> dict[str, Layers]:
    suffix = "layers" if many else "layer"
    return {f"{side}_{suffix}": Layers(side, many) for side in SIDES}
