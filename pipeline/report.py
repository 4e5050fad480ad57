"""The comparison report: plain text built from the evaluation metrics; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def comparison_table(evaluation: Mapping[str, Any], baseline: str | None) -> str:
    """A markdown table of the teacher and every student; differences are to `baseline`'s accuracy."""
    teacher = evaluation["teacher"]
    students = evaluation["students"]
    base_acc = students[baseline]["test_accuracy"] if baseline in students else None
    lines = [
        "| model | parameters | test accuracy | vs. "
        + (baseline or "baseline")
        + " | agrees with teacher |",
        "|---|---:|---:|---:|---:|",
        f"| teacher | {teacher['parameters']:,} | {teacher['test_accuracy']:.2%} | | |",
    ]
    for name, m in students.items():
        diff = (
            "" if base_acc is None or name == baseline else _points(m["test_accuracy"] - base_acc)
        )
        lines.append(
            f"| {name} | {m['parameters']:,} | {m['test_accuracy']:.2%} | {diff} "
            f"| {m['teacher_agreement']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f} pt"
