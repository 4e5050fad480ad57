"""Where stages write; dvc.yaml declares the same paths (tests/test_pipeline.py checks it).

A model is named by its role: `teacher-<seed>` or `<variant>-<seed>`.
"""

from pathlib import Path

DATA = Path("data/cifar10.safetensors")
TEACHERS_DIR = Path("models/teachers")
EVALUATION = Path("metrics/evaluation.json")
SPEED = Path("metrics/speed.json")
STATISTICS = Path("metrics/statistics.json")
REPORT = Path("reports/comparison.md")
TRADEOFF_PLOT = Path("reports/tradeoff.png")
CURVES_PLOT = Path("reports/curves.png")


def teacher_role(seed: int) -> str:
    return f"teacher-{seed}"


def student_role(variant: str, seed: int) -> str:
    return f"{variant}-{seed}"


def model(role: str) -> Path:
    """models/teachers/teacher-<seed>.safetensors or models/students/<variant>-<seed>.safetensors."""
    folder = TEACHERS_DIR if role.startswith("teacher-") else Path("models/students")
    return folder / f"{role}.safetensors"


LAYER_PREFIX = "layer:"  # the key of a tapped layer's outputs in a teacher-outputs file


def teacher_outputs(seed: int) -> Path:
    return Path(f"data/teacher_outputs/{seed}.safetensors")


def train_metrics(role: str) -> Path:
    return Path(f"metrics/train/{role}.json")


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
