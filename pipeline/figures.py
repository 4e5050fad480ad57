"""Figures for the report and for MLflow, drawn with matplotlib (headless); no I/O, no tracking.

Each function returns a Figure; the caller saves or logs it and closes it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

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


FORMAT_MARKERS = {"PyTorch fp32": "o", "ONNX fp32": "s", "ONNX int8": "^"}


def pareto(points: Mapping[str, Mapping[str, float]], front: Sequence[str]) -> Figure:
    """Test accuracy against batch-1 CPU latency, one point per model and format ("kd, ONNX
    int8"): a colour per model, a marker per format; the Pareto front (`front`, by latency) is
    joined by a line and named."""
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    models = list(dict.fromkeys(name.split(", ")[0] for name in points))
    colors = {m: TEACHER_COLOR if m == "teacher" else f"C{i}" for i, m in enumerate(models)}
    for name, m in points.items():
        model, fmt = name.split(", ", 1)
        ax.scatter(m["latency_ms_p50"], 100 * m["test_accuracy"], s=50, color=colors[model],
                   marker=FORMAT_MARKERS.get(fmt, "o"), zorder=3)  # fmt: skip
        if name in front:
            ax.annotate(name, (m["latency_ms_p50"], 100 * m["test_accuracy"]), xytext=(6, 4),
                        textcoords="offset points", fontsize=8)  # fmt: skip
    ax.step([points[n]["latency_ms_p50"] for n in front],
            [100 * points[n]["test_accuracy"] for n in front],
            where="post", color="tab:red", alpha=0.5, label="Pareto front")  # fmt: skip
    for model, color in colors.items():
        ax.scatter([], [], color=color, label=model)
    for fmt, marker in FORMAT_MARKERS.items():
        ax.scatter([], [], color="gray", marker=marker, label=fmt)
    ax.set_xscale("log")  # formats differ by factors, not by steps
    ax.set_xlabel("CPU latency at batch 1, median (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax.set_title("accuracy against latency, every model in every format (front named)")
    return fig


def curves(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Per-epoch curves, every model overlaid on each panel, epochs as integers.

    The first row compares like with like across models: the cross-entropy term of the training
    loss (every method has it), training accuracy, and the monitored accuracy (validation when
    there is a validation split, else test). Below, each variant whose method adds to the
    cross-entropy gets a panel of its own: its total training loss and each added term, which
    are on scales of their own. A model not trained here (a given teacher) has no curve."""
    histories = {name: rows for name, rows in histories.items() if rows}
    first = next(iter(histories.values()))[0]
    monitored = "val_accuracy" if "val_accuracy" in first else "test_accuracy"
    shared = (("train_ce", "training cross-entropy"),
              ("train_accuracy", "training accuracy (%)"),
              (monitored, monitored.replace("_", " ").replace("val ", "validation ") + " (%)"))  # fmt: skip
    own = [name for name, rows in histories.items() if _added_terms(rows[0])]
    columns = 3
    fig, axes = plt.subplots(1 + -(-len(own) // columns), columns, squeeze=False,
                             figsize=(14, 4.2 * (1 + -(-len(own) // columns))), layout="constrained")  # fmt: skip
    for ax, (key, label) in zip(axes[0], shared, strict=True):
        for name, rows in histories.items():
            scale = 100 if key.endswith("accuracy") else 1
            _line(ax, rows, key, scale, name, TEACHER_COLOR if name == "teacher" else None)
        _axes(ax, label)
    axes[0][-1].legend()
    panels = [ax for row in axes[1:] for ax in row]
    for ax, name in zip(panels, own, strict=False):
        rows = histories[name]
        _line(ax, rows, "train_loss", 1, "total", None)
        for term in _added_terms(rows[0]):
            _line(ax, rows, f"train_{term}", 1, term, None, linestyle="--")
        _axes(ax, f"{name}: training loss")
        ax.legend()
    for ax in panels[len(own) :]:
        ax.set_visible(False)
    return fig


def _added_terms(row: Mapping[str, float]) -> list[str]:
    """The loss terms a method adds to cross-entropy (train_<term> besides train_ce)."""
    skip = {"train_ce", "train_loss", "train_accuracy"}
    return [k.removeprefix("train_") for k in row if k.startswith("train_") and k not in skip]


def _line(ax, rows, key: str, scale: float, label: str, color, **style) -> None:
    ax.plot([r["epoch"] for r in rows], [scale * r[key] for r in rows], marker="o",
            markersize=3, label=label, color=color, **style)  # fmt: skip


def _axes(ax, label: str) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not 1.2, 1.4, ...
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)


def _compact(x: float, _pos: int) -> str:
    """1186986 -> 1.2M, 267738 -> 268k, 0.17 -> 0.17."""
    if x >= 1e6:
        return f"{x / 1e6:.3g}M"
    if x >= 1e3:
        return f"{x / 1e3:.3g}k"
    return f"{x:.3g}"


def close(fig: Figure) -> None:
    plt.close(fig)
