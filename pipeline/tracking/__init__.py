"""The only module (a package) that talks to MLflow: the store, runs, the registry, the served model.

- store: where runs go (the embedded SQLite file of the project, or MLFLOW_TRACKING_URI), checks
  that it answers, its failures as one line, and the experiment (opened in MLflow's model-training
  view, with a saved view of the models).
- runs: one run per stage that does work, under one parent run per pipeline invocation that holds
  one run per model with its evaluated metrics.
- registry: versions found by the weights' MD5, aliases (challenger, champion), loading by URI.
- served: the logged model: image files in, class names and probabilities out.
- exported: the ONNX models (fp32, int8) of the export stage, in MLflow's ONNX flavour.
"""

from pipeline.tracking.exported import FORMAT_TAG, log_onnx
from pipeline.tracking.registry import (
    Version,
    by_alias,
    find_version,
    follow_alias,
    get_version,
    load_pyfunc,
    load_registered,
    register,
    set_alias,
)
from pipeline.tracking.runs import (
    MODEL_MD5_TAG,
    MODEL_URI_TAG,
    StageRun,
    params_hash,
    stage_run,
)
from pipeline.tracking.served import INPUT_COLUMN, ImageClassifier, answers, log_model
from pipeline.tracking.store import TrackingError, check_server, check_store, tracking_uri

__all__ = [
    "FORMAT_TAG",
    "INPUT_COLUMN",
    "MODEL_MD5_TAG",
    "MODEL_URI_TAG",
    "ImageClassifier",
    "StageRun",
    "TrackingError",
    "Version",
    "answers",
    "by_alias",
    "check_server",
    "check_store",
    "find_version",
    "follow_alias",
    "get_version",
    "load_pyfunc",
    "load_registered",
    "log_model",
    "log_onnx",
    "params_hash",
    "register",
    "set_alias",
    "stage_run",
    "tracking_uri",
]
