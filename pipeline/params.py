"""params.yaml sections as frozen dataclasses.

Every key is checked against the dataclass: an unknown key, a missing one or a value of the wrong type
raises ParamsError with one line that names the key, the value and what is allowed. Range checks live
next to the fields they guard (`_check` methods), so the rules are visible where the defaults are.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import urllib.parse
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline import losses, models
from pipeline.errors import UserError, one_line
from pipeline.train import PRECISIONS, check_device

PARAMS_FILE = Path("params.yaml")
# Counts (sizes, epochs, batches, iterations) above this are typos, and overflow torch's indices.
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1  # numpy's limit too; torch would take up to 2**64 - 1
MAX_TIMEOUT_S = 86400  # a day: sockets refuse much longer timeouts (OverflowError)
MAX_NAME = 100  # a variant's name: it becomes file names (at most 255 bytes) and metric keys
CIFAR10 = "cifar10"  # data.source of the CIFAR-10 python archive at data.url
MAX_IMAGE_SIZE = 4096  # data.image_size: larger is a typo (50,000 images of 4096 x 4096 = 2.5 TB)


class ParamsError(UserError, ValueError):
    """A params.yaml value that cannot be used; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class MlflowParams:
    experiment: str  # where runs are recorded; not a DVC param (it changes no result)

    def _check(self, where: str) -> None:
        _check_name(self.experiment, f"{where}.experiment", 500)  # MLflow's limit


@dataclasses.dataclass(frozen=True)
class DataParams:
    url: str
    # Pins the data: required for the CIFAR-10 archive; for an image folder optional, checked if given.
    md5: str | None = None
    train_size: int | None = None  # the first N training images; None = all 50,000
    test_size: int | None = None  # the first N test images; None = all 10,000
    val_size: int = 0  # images held out of the training set per seed; 0 = the tutorial's protocol
    timeout_s: float = 60.0  # the longest wait for the download server (connecting, each read)
    # "cifar10": the CIFAR-10 python archive fetched from `url`. Anything else is the path (relative
    # to the project root, or absolute) of an image folder or a .tar.gz of one (image_folder.py).
    source: str = CIFAR10
    image_size: int | None = None  # resize every image to N x N; None = keep the images' size

    def _check(self, where: str) -> None:
        self._check_source(where)
        try:
            urllib.parse.urlsplit(self.url)
            usable = bool(self.url.strip()) and self.url.isprintable()  # no NUL, no line break
        except ValueError:  # "Invalid IPv6 URL": an unclosed '[' after the scheme
            usable = False
        if not usable:  # else a training stage fails on it, when it records the data source
            raise ParamsError(f"{where}.url = {self.url!r}: expected an http(s) URL, a file:// URL "
                              "or a local path")  # fmt: skip
        for key in ("train_size", "test_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ParamsError(f"{where}.{key} = {value}: must be >= 1, or null for all")
        if not 0 < self.timeout_s <= MAX_TIMEOUT_S:
            raise ParamsError(f"{where}.timeout_s = {self.timeout_s}: must be > 0 and at most "
                              f"{MAX_TIMEOUT_S} (seconds)")  # fmt: skip
        if self.val_size < 0:
            raise ParamsError(f"{where}.val_size = {self.val_size}: must be >= 0 (0 = no split)")
        if self.train_size is not None and self.val_size >= self.train_size:
            raise ParamsError(
                f"{where}.val_size = {self.val_size}: must be smaller than train_size "
                f"({self.train_size}), or the training split is empty"
            )

    @property
    def location(self) -> str:
        """Where the images come from: data.url for the CIFAR-10 archive, else data.source."""
        return self.url if self.source == CIFAR10 else self.source

    @property
    def name(self) -> str:
        """The dataset's name in MLflow: cifar10, or the image folder's (without its suffixes)."""
        return self.source if self.source == CIFAR10 else Path(self.source).name.split(".")[0]

    def _check_source(self, where: str) -> None:
        """source, md5 and image_size; whether an image folder exists is the download stage's
        check, as params are checked by every stage and only that one reads the folder."""
        if not self.source.strip() or not self.source.isprintable():
            raise ParamsError(f"{where}.source = {self.source!r}: expected cifar10, or the path of "
                              "an image folder or a .tar.gz of one")  # fmt: skip
        if self.md5 is None:
            if self.source == CIFAR10:
                raise ParamsError(f"{where}.md5 = null: the CIFAR-10 archive needs its MD5 (32 "
                                  "hexadecimal digits); only an image folder may go without")  # fmt: skip
        elif len(self.md5) != 32 or any(c not in "0123456789abcdef" for c in self.md5.lower()):
            raise ParamsError(f"{where}.md5 = {self.md5!r}: expected 32 hexadecimal digits")
        if self.image_size is not None and not 8 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ParamsError(f"{where}.image_size = {self.image_size}: must be from 8 to "
                              f"{MAX_IMAGE_SIZE}, or null to keep the images' size")  # fmt: skip


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
    processes: int = 1  # > 1: training stages run as that many ranks under torchrun (DDP)

    def _check(self, where: str) -> None:
        if self.precision not in PRECISIONS:
            raise ParamsError(
                f"{where}.precision = {self.precision!r}: expected one of {', '.join(PRECISIONS)}"
            )
        _check_count(self.batch_size, f"{where}.batch_size")
        if self.lr <= 0:
            raise ParamsError(f"{where}.lr = {self.lr}: must be > 0")
        self._check_processes(where)
        try:
            check_device(self.device)
        except ValueError as e:
            raise ParamsError(f"{where}.device = {self.device!r}: {e}") from None

    def _check_processes(self, where: str) -> None:
        _check_count(self.processes, f"{where}.processes")
        if self.processes > self.batch_size:
            raise ParamsError(f"{where}.processes = {self.processes} is more than {where}.batch_size "
                              f"= {self.batch_size}: every rank needs a part of each batch")  # fmt: skip
        if self.processes == 1:
            return
        if ":" in self.device:
            raise ParamsError(f"{where}.device = {self.device!r} names one device, but "
                              f"{where}.processes = {self.processes} gives each rank its own: use "
                              "auto, cpu or cuda")  # fmt: skip
        gpus = torch.cuda.device_count() if self.device in ("auto", "cuda") else 0
        if gpus and self.processes > gpus:
            raise ParamsError(f"{where}.processes = {self.processes}: this machine has {gpus} "
                              f"GPU(s), one per rank; set it to at most {gpus}")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RoleParams:
    """What differs between the teacher and the students: the model and how long it trains."""

    epochs: int
    # A built-in, a torchvision classification model or package.module:Name (see models.py),
    # called with `args` (num_classes comes from the data unless args sets it).
    model: str = "LightNN"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The file or folder that holds the model's code: a DVC dependency of every stage that builds
    # the model. An import-path model's source file must lie inside it.
    code: str = "pipeline/models.py"

    def _check(self, where: str) -> None:
        _check_count(self.epochs, f"{where}.epochs")
        try:
            models.resolve(self.model, f"{where}.model")
        except models.ModelError as e:
            raise ParamsError(str(e)) from None
        code = Path(self.code)
        source = models.source_file(self.model)  # None: a built-in or torchvision model
        if code.is_absolute() or ".." in code.parts or (source and not code.exists()):
            raise ParamsError(f"{where}.code = {self.code!r}: expected a file or folder inside the "
                              "project that holds the model's code")  # fmt: skip
        if source is not None and not source.is_relative_to(code.resolve()):
            raise ParamsError(f"{where}.code = {self.code!r} does not hold {where}.model "
                              f"{self.model!r} (defined in {_shown_path(source)}); set it to that "
                              "file or its folder, so that DVC reruns when it changes")  # fmt: skip


def _shown_path(path: Path) -> str:
    root = Path.cwd().resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


@dataclasses.dataclass(frozen=True)
class TeacherParams(RoleParams):
    model: str = "DeepNN"
    # Seeds to train a teacher with. A student of seed s learns from the teacher of seed s when
    # there is one, else from the first: the default trains one teacher for every student.
    seeds: tuple[int, ...] = (42,)
    # A teacher already trained: a weights file (safetensors or a PyTorch state dict) or a models:/
    # URI of the MLflow registry. Then no teacher is trained; null trains one.
    weights: str | None = None

    def _check(self, where: str) -> None:
        super()._check(where)
        _check_seeds(self.seeds, f"{where}.seeds")
        if self.weights is None or self.weights.startswith("models:/"):
            return
        if not Path(self.weights).is_file():
            raise ParamsError(f"{where}.weights = {self.weights!r}: no such file; give a weights "
                              "file (.safetensors, .pt), a models:/ URI, or null to train one")  # fmt: skip


def _check_seeds(seeds: tuple[int, ...], where: str) -> None:
    if not seeds:
        raise ParamsError(f"{where} = []: list at least one seed")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0 or max(seeds) > MAX_SEED:
        raise ParamsError(
            f"{where} = {list(seeds)}: seeds must be distinct integers from 0 to {MAX_SEED}"
        )


def _check_count(value: int, where: str) -> None:
    if not 1 <= value <= MAX_COUNT:
        raise ParamsError(f"{where} = {value}: must be from 1 to {MAX_COUNT}")


def _check_name(value: str, where: str, limit: int) -> None:
    """A name MLflow accepts: not blank, one line, at most `limit` characters."""
    if not value.strip() or not value.isprintable() or len(value) > limit:
        raise ParamsError(f"{where} = {value!r}: expected a name of 1 to {limit} printable "
                          "characters")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """How the deployment figures are measured (CPU, fp32, the deployable model, one process)."""

    latency_iters: int = 200  # timed batch-1 calls for the median and p95 (after warm-up)
    throughput_iters: int = 10  # timed batch-256 calls (after warm-up)

    def _check(self, where: str) -> None:
        if not 20 <= self.latency_iters <= MAX_COUNT:
            raise ParamsError(f"{where}.latency_iters = {self.latency_iters}: must be from 20 "
                              f"(for a p95) to {MAX_COUNT}")  # fmt: skip
        _check_count(self.throughput_iters, f"{where}.throughput_iters")


@dataclasses.dataclass(frozen=True)
class ExportParams:
    """What the export stage checks its ONNX files against, and how int8 is calibrated."""

    calibration_images: int = 1024  # training images of the student's seed (never test images)
    logit_tolerance: float = 1e-3  # the most |ONNX fp32 - PyTorch fp32| any logit may differ by
    int8_max_accuracy_drop: float | None = 0.02  # the most test accuracy int8 may lose (null: any)

    def _check(self, where: str) -> None:
        _check_count(self.calibration_images, f"{where}.calibration_images")
        if not 0 < self.logit_tolerance <= 1:
            raise ParamsError(f"{where}.logit_tolerance = {self.logit_tolerance}: must be above 0 "
                              "and at most 1 (a logit's absolute difference)")  # fmt: skip
        drop = self.int8_max_accuracy_drop
        if drop is not None and not 0 <= drop <= 1:
            raise ParamsError(f"{where}.int8_max_accuracy_drop = {drop}: must be from 0 to 1 "
                              "(a fraction of the test set), or null for no limit")  # fmt: skip


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
        for key in ("teacher", "student"):
            name = getattr(self, key)
            _check_name(name, f"{where}.{key}", 250)
            if "/" in name or ":" in name:  # MLflow's rule: they would break models:/ URIs
                raise ParamsError(f"{where}.{key} = {name!r}: may not contain '/' or ':'")
        if self.teacher == self.student:
            raise ParamsError(f"{where}.teacher and .student = {self.teacher!r}: must differ")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One student: a distillation method and that method's parameters (checked, with its
    defaults filled in, by losses.resolve)."""

    name: str
    method: str
    options: tuple[tuple[str, Any], ...]  # numbers, switches, layers' module paths (or tuples)
    augment: bool = False  # random crop + flip; the teacher then runs live on every batch

    @property
    def kwargs(self) -> dict[str, float | str]:
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
    export: ExportParams
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
    "export": ExportParams,
    "registry": RegistryParams,
}


def load_all(path: Path = PARAMS_FILE) -> Params:
    """Read and check all of params.yaml, so a mistake anywhere stops a stage before any work."""
    doc = read_yaml(path)
    if doc is None:
        doc = {}
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
    variants = parse_variants(doc["variants"], sections["student"], sections["teacher"])
    return Params(**sections, seeds=seeds, variants=variants)


def read_yaml(path: Path) -> Any:
    """The document in `path`; ParamsError (with line and column) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path} not found in {Path.cwd()}; run the stage from the project "
                          "root, where params.yaml is") from None  # fmt: skip
    except (OSError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path} cannot be read ({e}); restore it with `git checkout "
                          f"{path}`") from None  # fmt: skip
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise ParamsError(f"{path} is nested too deeply to read; look for a run of unclosed '[' "
                          "or '{'") from None  # fmt: skip
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ParamsError(f"{path} is not valid YAML{at}: {' '.join(problem.split())}; fix "
                          "that line") from None  # fmt: skip


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with two differences that matter to someone editing params.yaml:
    a key given twice in one mapping is an error, not silently the last one, and `1e-3` is a
    number, as in YAML 1.2 (and in DVC, which writes `-S` values), not the string '1e-3'."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """A value that the tag of its node cannot read (`2001-13-45` is a timestamp, `!!int x`)
        is a ConstructorError at that node, like every other error of the document."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, LookupError, AttributeError, ArithmeticError):
            tag = node.tag.removeprefix("tag:yaml.org,2002:")
            raise yaml.constructor.ConstructorError(
                None, None, f"{one_line(node.value, 40)!r} is not a valid {tag}; quote it if it is "
                "text", node.start_mark) from None  # fmt: skip

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: its keys may be overridden here, which is what it is for
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str | int | float | bool):
                continue  # an unhashable key: SafeLoader's own error says so
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping; keep one",
                    key_node.start_mark)  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_variants(
    raw: Any, student: RoleParams | None = None, teacher: RoleParams | None = None
) -> dict[str, Variant]:
    """The variants, each layer a method taps filled in from its model's default where not given
    (the built-ins': see models.DEFAULT_LAYERS)."""
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"variants = {raw!r}: expected a mapping of name -> {{method, ...}}")
    variants = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name) or len(name) > MAX_NAME:
            raise ParamsError(f"variants.{name}: a name is 1 to {MAX_NAME} letters, digits, '_' "
                              "and '-' (not first)")  # fmt: skip
        if name.lower() in (n.lower() for n in variants):
            raise ParamsError(f"variants.{name}: differs from another variant's name only in case; "
                              "their files would collide on macOS and Windows")  # fmt: skip
        if name.startswith("teacher"):
            raise ParamsError(
                f"variants.{name}: names starting 'teacher' are the teachers'; rename it"
            )
        if not isinstance(spec, dict) or "method" not in spec:
            raise ParamsError(f"variants.{name} = {spec!r}: expected a mapping with a 'method'")
        options = {k: v for k, v in spec.items() if k not in ("method", "augment")}
        if isinstance(spec["method"], str) and spec["method"] in losses.METHODS:
            options = _with_default_layers(options, spec["method"], f"variants.{name}",
                                           {"student": student, "teacher": teacher})  # fmt: skip
        augment = spec.get("augment", False)
        if not isinstance(augment, bool):
            raise ParamsError(f"variants.{name}.augment = {augment!r}: expected true or false")
        if not isinstance(spec["method"], str) or spec["method"] not in losses.METHODS:
            raise ParamsError(f"variants.{name}.method = {spec['method']!r}: expected one of "
                              f"{', '.join(losses.METHODS)}")  # fmt: skip
        try:  # every parameter as the method takes it, its defaults included (logged with runs)
            options = losses.resolve(spec["method"], options, where=f"variants.{name}")
        except ValueError as e:
            raise ParamsError(str(e)) from None
        variants[name] = Variant(name, spec["method"], tuple(options.items()), augment)
    return variants


def _with_default_layers(options: dict, method: str, where: str, roles: dict) -> dict:
    """`options` with each layer parameter that is not given set to its model's default layer (a
    list of that one layer where the method takes lists)."""
    options = dict(options)
    for key in losses.layers(method):
        side = key.split("_")[0]
        role = roles[side] or (TeacherParams if side == "teacher" else RoleParams)(epochs=1)
        if key not in options:
            if role.model not in models.DEFAULT_LAYERS:
                example = "[layer2, layer3]" if losses.many_layers(method, key) else "layer3"
                raise ParamsError(f"{where}.{key}: missing, and {role.model} has no default layer; "
                                  f"name the module to tap (e.g. {example})")  # fmt: skip
            default = models.DEFAULT_LAYERS[role.model]
            options[key] = [default] if losses.many_layers(method, key) else default
    return options


_VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*", re.ASCII)


def parse(cls: type, raw: Any, where: str):
    """Build dataclass `cls` from the mapping `raw`; `where` is the key path used in messages."""
    if raw is None:  # a section whose keys are all commented out: its defaults
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where} = {raw!r}: expected a mapping with keys {_names(cls)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)  # keys may be numbers, null, ...
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key; allowed keys are {_names(cls)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        if name not in raw:
            if field.default is field.default_factory is dataclasses.MISSING:
                raise ParamsError(f"{where}.{name}: missing; allowed keys are {_names(cls)}")
            continue
        values[name] = _coerce(raw[name], hints[name], f"{where}.{name}")
    obj = cls(**values)
    if hasattr(obj, "_check"):
        obj._check(where)
    return obj


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range (about 1.8e308)
        return False


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
    if origin is dict:  # keyword arguments: names to any YAML values
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ParamsError(f"{where} = {value!r}: expected a mapping of names to values")
        return dict(value)
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
        if not _finite(value):
            raise ParamsError(f"{where} = {value!r}: expected a finite number")
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ParamsError(f"{where} = {value!r}: expected {hint.__name__}")
