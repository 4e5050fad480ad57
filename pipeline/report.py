"""The comparison report as plain values, built from the evaluation metrics; no I/O, no tracking."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.params import SELECTABLE


def models_of(tree: Mapping[str, Any]) -> dict[str, Any]:
    """{"teacher": ..., "students": {name: ...}} flattened to {"teacher": ..., name: ...}."""
    return {"teacher": tree["teacher"], **tree["students"]}


def champion(evaluation: Mapping[str, Any], select_by: str) -> str:
    """The student that is best by `select_by` (the first listed wins a tie)."""
    students = evaluation["students"]
    sign = 1 if SELECTABLE[select_by] == "max" else -1
    return max(students, key=lambda name: sign * students[name][select_by])


def comparison_table(
    evaluation: Mapping[str, Any],
    speed: Mapping[str, Any],
    baseline: str | None,
    champion: str | None = None,
) -> str:
    """A markdown table of the teacher and every student.

    Differences are to `baseline`'s accuracy (the CE-only student), speed-ups to the teacher's median
    batch-1 latency; the champion is marked.
    """
    quality, timing = models_of(evaluation), models_of(speed)
    base_acc = quality[baseline]["test_accuracy"] if baseline in evaluation["students"] else None
    teacher_ms = timing["teacher"]["latency_ms_p50"]
    lines = [
        f"| model | test accuracy | vs. {baseline or 'baseline'} | agrees with teacher "
        "| KL to teacher | ECE | parameters | weights | latency p50 / p95 | speed-up "
        "| throughput |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, q in quality.items():
        t = timing[name]
        diff = (
            ""
            if base_acc is None or name in (baseline, "teacher")
            else _points(q["test_accuracy"] - base_acc)
        )
        label = f"**{name}** (champion)" if name == champion else name
        agreement = f"{q['teacher_agreement']:.2%}" if "teacher_agreement" in q else ""
        kl = f"{q['teacher_kl']:.3f}" if "teacher_kl" in q else ""
        lines.append(
            f"| {label} | {q['test_accuracy']:.2%} | {diff} | {agreement} | {kl} | {q['ece']:.3f} "
            f"| {q['parameters']:,} | {q['weights_bytes'] / 1e6:.2f} MB "
            f"| {t['latency_ms_p50']:.2f} / {t['latency_ms_p95']:.2f} ms "
            f"| {teacher_ms / t['latency_ms_p50']:.1f}x | {t['throughput']:,.0f}/s |"
        )
    return "\n".join(lines) + "\n"


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f} pt"
