"""Exported models in MLflow: ONNX files logged with MLflow's ONNX flavour, found again by the
weights they were exported from and their format.

A logged ONNX model takes uint8 images (N x 3 x H x W, a tensor input: `{"inputs": [...]}` in a
served model's JSON) and answers logits; its signature and input example say so. Its tags name
the PyTorch weights it came from (their MD5, as dvc.lock records it), its format and its role,
which is how the report stage finds the champion's int8 form to register.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping

import mlflow
import mlflow.onnx
import numpy as np
from mlflow.models import infer_signature

from pipeline.tracking.runs import MODEL_MD5_TAG

FORMAT_TAG = "format"  # pytorch (the pyfunc of served.py), onnx (fp32) or int8 (ONNX, int8)
DEFAULT_FORMAT = "pytorch"  # what a version without the tag is (registered by earlier versions)


def log_onnx(
    model: bytes, name: str, example: np.ndarray, answer: np.ndarray, tags: Mapping[str, str]
) -> str:
    """Log an ONNX model into the active run under `name`; returns its models:/ URI. `example`:
    uint8 images; `answer`: the model's logits for them (for the signature)."""
    import onnx  # here: only the export stage needs it

    info = mlflow.onnx.log_model(
        onnx.load_from_string(model),
        name=name,
        signature=infer_signature(example, answer),
        input_example=example,
        # Pinned, not inferred: inferring loads the model again in a subprocess.
        pip_requirements=[_pinned(p) for p in ("onnx", "onnxruntime", "numpy", "mlflow")],
        save_as_external_data=False,  # one file: the models are a few MB
        # what the pinned onnxruntime (the CPU build) has; see README, Ship the student, for GPUs
        onnx_execution_providers=["CPUExecutionProvider"],
        tags=dict(tags),
    )
    return info.model_uri


def find_logged(experiment_id: str, weights_md5: str, fmt: str) -> str | None:
    """The models:/ URI of the latest ONNX model of `fmt` exported from these weights; None when
    no run logged one."""
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{MODEL_MD5_TAG}` = '{weights_md5}' AND tags.`{FORMAT_TAG}` = '{fmt}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
        output_format="list",
    )
    return f"models:/{found[0].model_id}" if found else None


def _pinned(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name).split('+')[0]}"
