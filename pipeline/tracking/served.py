"""The model as it is logged, loaded and served: image files in, class names and probabilities out.

A pyfunc model, logged from code (tracking/served_model.py), not pickled: its artifacts are the
network's weights (the same safetensors bytes as the DVC output, so the same MD5) and a card that
says how to rebuild it (the model by reference, its classes, the normalisation). It takes a table
with a column `image` of encoded image files (PNG, JPEG, ... of any size, resized to the training
size; base64 strings in a served model's JSON) and answers, per image, the predicted `class`, its
`probability`, every class's `probabilities` and the raw `logits`. Load it with
mlflow.pyfunc.load_model, or serve it with `mlflow models serve`; `unwrap_python_model().classifier`
is the torch module itself (uint8 N x 3 x H x W in, logits out).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import mlflow
import mlflow.pyfunc
import mlflow.pytorch
import pandas as pd
import safetensors.torch
import torch
from mlflow.models import infer_signature

from pipeline import images, models
from pipeline.data import Normalizer

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pipeline/: travels with the model
MODEL_CODE = Path(__file__).with_name("served_model.py")
INPUT_COLUMN = "image"


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """The deployable network, its class names and the image size it was trained on."""

    def __init__(self, classifier: torch.nn.Module | None = None, classes: Sequence[str] = (),
                 size: Sequence[int] = ()):  # fmt: skip
        # Empty when MLflow loads the model from its code: load_context fills it in.
        self.classifier = classifier.cpu().eval() if classifier is not None else None
        self.classes = list(classes)
        self.size = tuple(size)

    def load_context(self, context) -> None:
        card = json.loads(Path(context.artifacts["card"]).read_text())
        self.classifier = rebuilt(card, safetensors.torch.load_file(context.artifacts["weights"]))
        self.classes, self.size = card["classes"], tuple(card["size"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        pixels = torch.stack([images.resize(images.decode(bytes(blob)), self.size)
                              for blob in model_input[INPUT_COLUMN]])  # fmt: skip
        with torch.inference_mode():
            logits = self.classifier(pixels).float()
        return answers(logits, self.classes)


def rebuilt(card: dict, state: dict[str, torch.Tensor]) -> models.Classifier:
    """The deployable network that a card and its weights describe, in eval mode on the CPU."""
    net = models.ModelCard(card["model"], card["args"], tuple(card["classes"]), card["mean"],
                           card["std"]).network()  # fmt: skip
    net.load_state_dict(state)
    return models.Classifier(net, Normalizer(card["mean"], card["std"])).eval()


def answers(logits: torch.Tensor, classes: Sequence[str]) -> pd.DataFrame:
    """One row per image: class, probability, probabilities (by class name), logits."""
    probabilities = torch.softmax(logits, dim=1)
    return pd.DataFrame({
        "class": [classes[i] for i in probabilities.argmax(dim=1).tolist()],
        "probability": probabilities.max(dim=1).values.tolist(),
        "probabilities": [dict(zip(classes, row, strict=True)) for row in probabilities.tolist()],
        "logits": logits.tolist(),
    })  # fmt: skip


def examples(pixels: torch.Tensor) -> pd.DataFrame:
    """The model's input for uint8 N x 3 x H x W pixels: one PNG file per image."""
    return pd.DataFrame({INPUT_COLUMN: [images.encode_png(p) for p in pixels.cpu()]})


def log_model(
    classifier: torch.nn.Module, weights: bytes, card: models.ModelCard, example: torch.Tensor
) -> str:
    """Log the deployable model into the active run; returns its models:/ URI. `weights`: the
    network's safetensors bytes; `example`: uint8 images of the training size."""
    size = tuple(example.shape[-2:])
    inputs = examples(example)
    outputs = ImageClassifier(classifier, card.classes, size).predict(None, inputs)
    with tempfile.TemporaryDirectory() as folder:
        artifacts = {
            "weights": Path(folder) / "weights.safetensors",
            "card": Path(folder) / "card.json",
        }
        artifacts["weights"].write_bytes(weights)
        fields = {**dataclasses.asdict(card), "classes": list(card.classes), "size": list(size)}
        artifacts["card"].write_text(json.dumps(fields, indent=2))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={k: str(v) for k, v in artifacts.items()},
            signature=infer_signature(inputs, outputs),
            input_example=inputs,
            code_paths=[str(PACKAGE_DIR), *map(str, card.code_paths)],
            # Pinned explicitly: inferring requirements re-imports the model in a subprocess,
            # which costs seconds per stage and guesses.
            pip_requirements=_requirements(),
            metadata={"classes": list(card.classes), "image_size": list(size)},
        )
    return info.model_uri


def _requirements() -> list[str]:
    pinned = (
        "torch",
        "torchvision",
        "numpy",
        "pandas",
        "pillow",
        "psutil",
        "safetensors",
        "mlflow",
    )
    # the installed distributions' versions, without importing them (torchvision takes seconds)
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in pinned]


def load_network(uri: str) -> torch.nn.Module:
    """The deployable network inside a logged model (models:/ or runs:/ URI), on the CPU: this
    pipeline's, or a plain `mlflow.pytorch` model (an earlier version's, or logged by hand)."""
    loaded = mlflow.pyfunc.load_model(uri)
    if "pytorch" in loaded.metadata.flavors:
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    return loaded.unwrap_python_model().classifier
