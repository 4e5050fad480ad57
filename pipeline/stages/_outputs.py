"""Where stages write; dvc.yaml declares the same paths (tests/test_pipeline.py checks it)."""

from pathlib import Path

DATA = Path("data/cifar10.safetensors")
TEACHER_MODEL = Path("models/teacher.safetensors")
TEACHER_OUTPUTS = Path("data/teacher_outputs.safetensors")
EVALUATION = Path("metrics/evaluation.json")
SPEED = Path("metrics/speed.json")
REPORT = Path("reports/comparison.md")
TRADEOFF_PLOT = Path("reports/tradeoff.png")
CURVES_PLOT = Path("reports/curves.png")


def model(role: str) -> Path:
    """models/teacher.safetensors, or models/students/<variant>.safetensors."""
    return TEACHER_MODEL if role == "teacher" else Path(f"models/students/{role}.safetensors")


def train_metrics(role: str) -> Path:
    return Path(f"metrics/train/{role}.json")


def train_history(role: str) -> Path:
    return Path(f"plots/train/{role}.json")


def confusion(role: str) -> Path:
    """One {actual, predicted} row per test image: DVC's confusion-matrix plot format."""
    return Path(f"plots/confusion/{role}.json")
