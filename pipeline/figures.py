"""Figures for the report and for MLflow, drawn with matplotlib (headless); no I/O, no tracking.

Each function returns a Figure; the caller saves or logs it and closes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

TEACHER_COLOR = "black"


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """Counts of true (rows) against predicted (columns) classes, with row-normalised shading."""
    n = len(classes)
    rates = [[c / max(sum(row), 1) for c in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i][j] > 0.5 else "black")  # fmt: skip
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    return fig


def tradeoff(models: Mapping[str, Mapping[str, float]]) -> Figure:
    """Test accuracy against parameters and against batch-1 CPU latency, one point per model.

    `models` maps a name to test_accuracy, parameters and latency_ms_p50; "teacher" is drawn apart.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, layout="constrained")
    for ax, key, label in (
        (axes[0], "parameters", "parameters"),
        (axes[1], "latency_ms_p50", "CPU latency at batch 1, median (ms)"),
    ):
        for name, m in models.items():
            color = TEACHER_COLOR if name == "teacher" else None
            ax.scatter(m[key], 100 * m["test_accuracy"], color=color, s=40)
            ax.annotate(name, (m[key], 100 * m["test_accuracy"]), xytext=(5, 4),
                        textcoords="offset points", fontsize=9)  # fmt: skip
        ax.set_xlim(0, 1.12 * max(m[key] for m in models.values()))  # from 0: ratios read true
        ax.xaxis.set_major_formatter(FuncFormatter(_compact))
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle("accuracy against size and latency")
    return fig


def curves(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Per-epoch training loss, training accuracy and the monitored accuracy (validation when there
    is a validation split, else test) of every model (one not trained here has no curve)."""
    histories = {name: rows for name, rows in histories.items() if rows}
    first = next(iter(histories.values()))[0]
    monitored = "val_accuracy" if "val_accuracy" in first else "test_accuracy"
    panels = (
        ("train_loss", "training loss"),
        ("train_accuracy", "training accuracy (%)"),
        (monitored, monitored.replace("_", " ").replace("val ", "validation ") + " (%)"),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    for ax, (key, label) in zip(axes, panels, strict=True):
        scale = 100 if key.endswith("accuracy") else 1
        for name, history in histories.items():
            epochs = [row["epoch"] for row in history]
            color = TEACHER_COLOR if name == "teacher" else None
            ax.plot(epochs, [scale * row[key] for row in history], marker="o", markersize=3,
                    label=name, color=color)  # fmt: skip
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[-1].legend()
    return fig


def _compact(x: float, _pos: int) -> str:
    """1186986 -> 1.2M, 267738 -> 268k, 0.17 -> 0.17."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def close(fig: Figure) -> None:
    plt.close(fig)
