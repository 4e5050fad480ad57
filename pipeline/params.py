"""params.yaml sections as frozen dataclasses.

Every key is checked against the dataclass: an unknown key, a missing one or a value of the wrong type
raises ParamsError with one line that names the key, the value and what is allowed. Range checks live
next to the fields they guard (`_check` methods), so the rules are visible where the defaults are.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline import losses
from pipeline.train import PRECISIONS

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """A params.yaml value that cannot be used; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class MlflowParams:
    experiment: str  # where runs are recorded; not a DVC param (it changes no result)


@dataclasses.dataclass(frozen=True)
class DataParams:
    url: str
    md5: str
    train_size: int | None = None  # the first N training images; None = all 50,000
    test_size: int | None = None  # the first N test images; None = all 10,000
    val_size: int = 0  # images held out of the training set per seed; 0 = the tutorial's protocol
    timeout_s: float = 60.0  # the longest wait for the download server (connecting, each read)

    def _check(self, where: str) -> None:
        md5 = self.md5.lower()
        if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
            raise ParamsError(f"{where}.md5 = {self.md5!r}: expected 32 hexadecimal digits")
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ParamsError(f"{where}.{key} = {value}: must be >= 1, or null for all")
        if self.timeout_s <= 0:
            raise ParamsError(f"{where}.timeout_s = {self.timeout_s}: must be > 0 (seconds)")
        if self.val_size < 0:
            raise ParamsError(f"{where}.val_size = {self.val_size}: must be >= 0 (0 = no split)")
        if self.train_size is not None and self.val_size >= self.train_size:
            raise ParamsError(
                f"{where}.val_size = {self.val_size}: must be smaller than train_size "
                f"({self.train_size}), or the training split is empty"
            )


@dataclasses.dataclass(frozen=True)
class NormalizeParams:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _check(self, where: str) -> None:
        if min(self.std) <= 0:
            raise ParamsError(f"{where}.std = {list(self.std)}: every value must be > 0")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """Shared by the teacher and every student, so their comparison is like for like."""

    batch_size: int
    lr: float
    device: str = "auto"  # "auto" picks CUDA when present, else CPU; or any torch device string
    precision: str = "bf16"  # or "fp32"; see README, Performance

    def _check(self, where: str) -> None:
        if self.precision not in PRECISIONS:
            raise ParamsError(
                f"{where}.precision = {self.precision!r}: expected one of {', '.join(PRECISIONS)}"
            )
        if self.batch_size < 1:
            raise ParamsError(f"{where}.batch_size = {self.batch_size}: must be >= 1")
        if self.lr <= 0:
            raise ParamsError(f"{where}.lr = {self.lr}: must be > 0")


@dataclasses.dataclass(frozen=True)
class RoleParams:
    """What differs between the teacher and the students."""

    epochs: int

    def _check(self, where: str) -> None:
        if self.epochs < 1:
            raise ParamsError(f"{where}.epochs = {self.epochs}: must be >= 1")


@dataclasses.dataclass(frozen=True)
class TeacherParams(RoleParams):
    # Seeds to train a teacher with. A student of seed s learns from the teacher of seed s when
    # there is one, else from the first: the default trains one teacher for every student.
    seeds: tuple[int, ...] = (42,)

    def _check(self, where: str) -> None:
        super()._check(where)
        _check_seeds(self.seeds, f"{where}.seeds")


def _check_seeds(seeds: tuple[int, ...], where: str) -> None:
    if not seeds:
        raise ParamsError(f"{where} = []: list at least one seed")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ParamsError(f"{where} = {list(seeds)}: seeds must be distinct integers >= 0")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """How the deployment figures are measured (CPU, fp32, the deployable model, one process)."""

    latency_iters: int = 200  # timed batch-1 calls for the median and p95 (after warm-up)
    throughput_iters: int = 10  # timed batch-256 calls (after warm-up)

    def _check(self, where: str) -> None:
        if self.latency_iters < 20:
            raise ParamsError(
                f"{where}.latency_iters = {self.latency_iters}: must be >= 20 (for a p95)"
            )
        if self.throughput_iters < 1:
            raise ParamsError(f"{where}.throughput_iters = {self.throughput_iters}: must be >= 1")


# Whether more is better, for each metric a champion can be chosen by.
DIRECTION = {
    "test_accuracy": "max",
    "teacher_agreement": "max",
    "teacher_kl": "min",
    "ece": "min",
    "val_accuracy": "max",  # used, instead of registry.select_by, whenever data.val_size > 0
}
# What registry.select_by may name: val_accuracy exists only with a split, which picks it anyway.
SELECTABLE = tuple(k for k in DIRECTION if k != "val_accuracy")


@dataclasses.dataclass(frozen=True)
class RegistryParams:
    """Names in the MLflow model registry, and how the student called `champion` is chosen."""

    teacher: str = "cifar10-teacher"
    student: str = "cifar10-student"
    select_by: str = "test_accuracy"

    def _check(self, where: str) -> None:
        if self.select_by not in SELECTABLE:
            raise ParamsError(
                f"{where}.select_by = {self.select_by!r}: expected one of {', '.join(SELECTABLE)}"
            )
        if self.teacher == self.student:
            raise ParamsError(f"{where}.teacher and .student = {self.teacher!r}: must differ")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One student: a distillation method and that method's parameters (checked by losses.bind)."""

    name: str
    method: str
    options: tuple[tuple[str, float], ...]
    augment: bool = False  # random crop + flip; the teacher then runs live on every batch

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.options)


@dataclasses.dataclass(frozen=True)
class Params:
    mlflow: MlflowParams
    data: DataParams
    normalize: NormalizeParams
    train: TrainParams
    seeds: tuple[int, ...]  # every student trains once per seed; paired across variants
    teacher: TeacherParams
    student: RoleParams
    evaluate: EvaluateParams
    registry: RegistryParams
    variants: dict[str, Variant]

    def teacher_seed(self, seed: int) -> int:
        """The seed of the teacher that the students of `seed` learn from."""
        return seed if seed in self.teacher.seeds else self.teacher.seeds[0]

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ParamsError(
                f"unknown variant {name!r}; params.yaml has: {', '.join(self.variants)}"
            )
        return self.variants[name]


SECTIONS = {
    "mlflow": MlflowParams,
    "data": DataParams,
    "normalize": NormalizeParams,
    "train": TrainParams,
    "teacher": TeacherParams,
    "student": RoleParams,
    "evaluate": EvaluateParams,
    "registry": RegistryParams,
}


def load_all(path: Path = PARAMS_FILE) -> Params:
    """Read and check all of params.yaml, so a mistake anywhere stops a stage before any work."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if not isinstance(doc, dict):
        raise ParamsError(f"{path}: expected a mapping of sections")
    allowed = [*SECTIONS, "seeds", "variants"]
    for key in doc:
        if key not in allowed:
            raise ParamsError(f"{path}: unknown section {key!r}; allowed: {', '.join(allowed)}")
    for key in allowed:
        if key not in doc:
            raise ParamsError(f"{path}: section {key!r} is missing")
    sections = {key: parse(cls, doc[key], key) for key, cls in SECTIONS.items()}
    seeds = _coerce(doc["seeds"], tuple[int, ...], "seeds")
    _check_seeds(seeds, "seeds")
    return Params(**sections, seeds=seeds, variants=parse_variants(doc["variants"]))


def parse_variants(raw: Any) -> dict[str, Variant]:
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"variants = {raw!r}: expected a mapping of name -> {{method, ...}}")
    variants = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
            raise ParamsError(f"variants.{name}: names may use letters, digits, '_' and '-' only")
        if name.startswith("teacher"):
            raise ParamsError(
                f"variants.{name}: names starting 'teacher' are the teachers'; rename it"
            )
        if not isinstance(spec, dict) or "method" not in spec:
            raise ParamsError(f"variants.{name} = {spec!r}: expected a mapping with a 'method'")
        options = {k: v for k, v in spec.items() if k not in ("method", "augment")}
        augment = spec.get("augment", False)
        if not isinstance(augment, bool):
            raise ParamsError(f"variants.{name}.augment = {augment!r}: expected true or false")
        if spec["method"] not in losses.METHODS:
            raise ParamsError(f"variants.{name}.method = {spec['method']!r}: expected one of "
                              f"{', '.join(losses.METHODS)}")  # fmt: skip
        try:
            losses.bind(spec["method"], options, where=f"variants.{name}")
        except ValueError as e:
            raise ParamsError(str(e)) from None
        variants[name] = Variant(name, spec["method"], tuple(options.items()), augment)
    return variants


_VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]+")


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
    if origin is tuple and args[-1] is Ellipsis:  # tuple[int, ...]: a list of any length
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where} = {value!r}: expected a list")
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
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
