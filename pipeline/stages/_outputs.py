"""Where stages write; dvc.yaml declares the same paths (tests/test_pipeline.py checks it).

A model is named by its role: `teacher-<seed>` or `<variant>-<seed>`.
"""

from pathlib import Path

DATA = Path("data/cifar10.safetensors")
TEACHERS_DIR = Path("models/teachers")
# DVC's metrics: one small file per model with its headline figures, so that `dvc metrics show`
# prints one row per model. The details (per-class accuracy, p95 latency, statistics) are in
# reports/, beside the report that reads them.
METRICS_DIR = Path("metrics")
EVALUATION = Path(
    "reports/evaluation.json"
)  # quality: reproducible (the same models, the same file)
SPEED = Path("reports/speed.json")  # latency and throughput: measured, so they vary per run
STATISTICS = Path("reports/statistics.json")
REPORT = Path("reports/comparison.md")
TRADEOFF_PLOT = Path("reports/tradeoff.png")
CURVES_PLOT = Path("reports/curves.png")
PARETO_PLOT = Path("reports/pareto.png")  # accuracy against latency, every model in every format
# The export stage's: the ONNX files, their figures (reproducible) and their timing (measured).
EXPORTS_DIR = Path("exports")
EXPORT = Path("reports/export.json")
EXPORT_SPEED = Path("reports/export_speed.json")
CURVES_DIR = Path(
    "plots/curves"
)  # <quantity>.json: every model's per-epoch values, for DVC's plots


def teacher_role(seed: int) -> str:
    return f"teacher-{seed}"


def student_role(variant: str, seed: int) -> str:
    return f"{variant}-{seed}"


def model(role: str) -> Path:
    """models/teachers/teacher-<seed>.safetensors or models/students/<variant>-<seed>.safetensors."""
    folder = TEACHERS_DIR if role.startswith("teacher-") else Path("models/students")
    return folder / f"{role}.safetensors"


def onnx_model(role: str, fmt: str) -> Path:
    """exports/<role>.onnx (fp32) or exports/<role>.int8.onnx."""
    return EXPORTS_DIR / (f"{role}.onnx" if fmt == "onnx" else f"{role}.{fmt}.onnx")


LAYER_PREFIX = "layer:"  # the key of a tapped layer's outputs in a teacher-outputs file


def teacher_outputs(seed: int) -> Path:
    return Path(f"data/teacher_outputs/{seed}.safetensors")


def headline(role: str) -> Path:
    """metrics/<role>.json: test accuracy, agreement, KL, ECE, latency, size."""
    return METRICS_DIR / f"{role}.json"


def train_metrics(role: str) -> Path:
    """What a training ends with: the last epoch's figures and, with a validation split, the best."""
    return Path(f"reports/train/{role}.json")


def train_history(role: str) -> Path:
    return Path(f"plots/train/{role}.json")


def confusion(role: str) -> Path:
    """One {actual, predicted} row per test image: DVC's confusion-matrix plot format."""
    return Path(f"plots/confusion/{role}.json")


def stage_of(role: str) -> str:
    """The DVC stage that trains `role`: train_teacher@<seed> or distill@<variant>-<seed>."""
    if role.startswith("teacher-"):
        return f"train_teacher@{role.removeprefix('teacher-')}"
    return f"distill@{role}"
