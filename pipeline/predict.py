"""Classify image files: `python -m pipeline.predict IMAGE [IMAGE ...]` (or `pipeline-predict`).

The model is the registry's champion by default (`models:/<registry.student>@champion`, in the
tracking store the pipeline uses: the project's mlflow.db, or MLFLOW_TRACKING_URI), or `--model`:
any models:/ or runs:/ URI, or a weights file of this project (models/students/kd-42.safetensors;
built as params.yaml's student.model, or teacher.model for one in models/teachers/, with the classes
of data/cifar10.safetensors). Images of any size and format Pillow reads are resized to the
model's input size. Prints each image's class and probability, and the next most likely classes;
`--json` prints one JSON object per image instead. Errors are one line, as in every stage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pandas as pd

from pipeline import data, images, models, params, tracking
from pipeline.errors import UserError
from pipeline.stages import _guard, _inputs, _outputs

DEFAULT_STUDENT = "cifar10-student"


class PredictError(UserError):
    """An image or a model that cannot be used; one line for the user."""


def main(argv: list[str] | None = None) -> int:
    argv, verbose = _guard.split_verbose(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    return _guard.guarded("predict", lambda: _predict(args), verbose)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=(
        "Classify image files with the champion student, or any logged model or weights file."))  # fmt: skip
    parser.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, ...)")
    parser.add_argument("--model", help="a models:/ or runs:/ URI, or a .safetensors weights file "
                        "of this project (default: models:/<registry.student>@champion)")  # fmt: skip
    parser.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    return parser


def _predict(args: argparse.Namespace) -> None:
    blobs = [_read(path) for path in args.images]  # every file first: a bad one costs no model
    predict = _model(args.model)
    answers = predict(pd.DataFrame({tracking.INPUT_COLUMN: blobs}))
    for path, row in zip(args.images, answers.to_dict("records"), strict=True):
        print(json.dumps({"image": str(path), **row}) if args.json else _line(path, row, args.top))


def _read(path: Path) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise PredictError(f"{path}: {e.strerror}; give image files that exist") from None
    try:
        images.decode(blob)
    except ValueError as e:
        raise PredictError(f"{path}: {e}; give PNG, JPEG or another image file") from None
    return blob


def _model(reference: str | None) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The model's predict (a table of image files in, answers out): the logged model of a URI,
    or a weights file wrapped the way the pipeline logs models."""
    if reference is None or ":/" in reference:
        uri = reference or f"models:/{_registered_student()}@champion"
        return tracking.load_pyfunc(uri, "--model").predict
    path = Path(reference)
    if path.suffix != ".safetensors" or not path.is_file():
        raise PredictError(f"--model {reference}: no such weights file; give a .safetensors file "
                           "of this project, or a models:/ URI")  # fmt: skip
    p = params.load_all()
    spec = p.teacher if _outputs.TEACHERS_DIR.name in path.parts else p.student
    ds = _inputs.dataset()
    net = models.build(spec.model, spec.args, len(ds.classes), 0, "model")
    net.load_state_dict(models.load_state(path))
    normalize = data.Normalizer(p.normalize.mean, p.normalize.std)
    size = tuple(ds.test.images.shape[-2:])
    model = tracking.ImageClassifier(models.Classifier(net, normalize), ds.classes, size)
    return partial(model.predict, None)


def _registered_student() -> str:
    if not params.PARAMS_FILE.is_file():
        return DEFAULT_STUDENT
    return params.load_all().registry.student


def _line(path: Path, row: dict, top: int) -> str:
    ranked = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])
    others = ", ".join(f"{name} {100 * p:.1f} %" for name, p in ranked[1:top])
    return f"{path}: {row['class']} {100 * row['probability']:.1f} %" + (
        f"  ({others})" if others else ""
    )


if __name__ == "__main__":
    sys.exit(main())
