"""The comparison report as plain values, built from the evaluation metrics; no I/O, no tracking.

The evaluation tree is {"teacher": {seed: metrics}, "students": {variant: {seed: metrics}}}. The
tables show one row per model kind (the teacher, each variant) with means over its seeds, and the
statistics of each variant against the CE-only baseline, paired by seed.
"""

from __future__ import annotations

import statistics as stat
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import stats
from pipeline.params import DIRECTION

Tree = Mapping[str, Any]


def rows(tree: Tree) -> dict[str, Mapping[str, Mapping[str, Any]]]:
    """{"teacher": {seed: ...}, variant: {seed: ...}, ...}: one entry per table row."""
    return {"teacher": tree["teacher"], **tree["students"]}


def mean_of(per_seed: Mapping[str, Mapping[str, Any]], key: str) -> float | None:
    values = [m[key] for m in per_seed.values() if m.get(key) is not None]
    return stat.fmean(values) if values else None


def best_student(evaluation: Tree, select_by: str) -> tuple[str, str]:
    """(variant, seed) of the single best student by `select_by` (the first listed wins a tie)."""
    sign = 1 if DIRECTION[select_by] == "max" else -1
    candidates = [
        (variant, seed, m[select_by])
        for variant, per_seed in evaluation["students"].items()
        for seed, m in per_seed.items()
    ]
    variant, seed, _ = max(candidates, key=lambda c: sign * c[2])
    return variant, seed


def statistics(
    evaluation: Tree, baseline: str | None, last_epoch: Tree | None = None
) -> dict[str, Any]:
    """Per variant: test accuracy over seeds, and its paired difference to `baseline`.

    `last_epoch` (same shape, `test_accuracy` of the last epoch's weights) is given when a validation
    split picked the best epoch; it gets the same summary.
    """
    out: dict[str, Any] = {}
    students = evaluation["students"]
    for variant, per_seed in students.items():
        seeds = list(per_seed)
        acc = [per_seed[s]["test_accuracy"] for s in seeds]
        entry: dict[str, Any] = {"test_accuracy": stats.summary(acc)}
        if last_epoch is not None:
            last = [last_epoch["students"][variant][s]["test_accuracy"] for s in seeds]
            entry["last_epoch_test_accuracy"] = stats.summary(last)
        if baseline in students and variant != baseline:
            base = [students[baseline][s]["test_accuracy"] for s in seeds]
            entry[f"vs_{baseline}"] = stats.paired(acc, base)
        out[variant] = entry
    stats.adjust_for_many({v: e[f"vs_{baseline}"] for v, e in out.items() if f"vs_{baseline}" in e})
    return out


def comparison_table(
    evaluation: Tree,
    speed: Tree,
    baseline: str | None,
    best: tuple[str, str] | None = None,
) -> str:
    """A markdown table of the teacher and every variant, means over seeds.

    Differences are to `baseline`'s mean accuracy (the CE-only student), speed-ups to the teacher's
    median batch-1 latency; the best student's variant is marked.
    """
    quality, timing = rows(evaluation), rows(speed)
    base_acc = mean_of(quality[baseline], "test_accuracy") if baseline in quality else None
    teacher_ms = mean_of(timing["teacher"], "latency_ms_p50")
    lines = [
        f"| model | seeds | test accuracy | vs. {baseline or 'baseline'} | agrees with teacher "
        "| KL to teacher | ECE | parameters | weights | latency p50 / p95 | speed-up "
        "| throughput |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, per_seed in quality.items():
        t = timing[name]
        acc = mean_of(per_seed, "test_accuracy")
        diff = (
            _points(acc - base_acc)
            if base_acc is not None and name not in (baseline, "teacher")
            else ""
        )
        label = f"**{name}** (best: seed {best[1]})" if best and name == best[0] else name
        agreement, kl = mean_of(per_seed, "teacher_agreement"), mean_of(per_seed, "teacher_kl")
        p50, p95 = mean_of(t, "latency_ms_p50"), mean_of(t, "latency_ms_p95")
        lines.append(
            f"| {label} | {len(per_seed)} | {acc:.2%} | {diff} "
            f"| {'' if agreement is None else f'{agreement:.2%}'} "
            f"| {'' if kl is None else f'{kl:.3f}'} | {mean_of(per_seed, 'ece'):.3f} "
            f"| {mean_of(per_seed, 'parameters'):,.0f} | {mean_of(per_seed, 'weights_bytes') / 1e6:.2f} MB "
            f"| {p50:.2f} / {p95:.2f} ms | {teacher_ms / p50:.1f}x "
            f"| {mean_of(t, 'throughput'):,.0f}/s |"
        )
    return "\n".join(lines) + "\n"


def _p(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def statistics_table(table: Mapping[str, Any], baseline: str | None) -> str:
    """Mean, std and 95 % interval of test accuracy per variant; the paired difference to the
    baseline with its interval, raw and Holm-adjusted p-values, and the verdict (on the latter)."""
    has_last = any("last_epoch_test_accuracy" in e for e in table.values())
    head = "| variant | seeds | test accuracy mean ± std | 95 % CI "
    head += "| last-epoch test accuracy " if has_last else ""
    head += f"| vs. {baseline} (paired) | 95 % CI | p-value | Holm p | verdict |"
    lines = [
        head,
        "|---|---:|---:|---:|" + ("---:|" if has_last else "") + "---:|---:|---:|---:|---|",
    ]
    for variant, e in table.items():
        acc = e["test_accuracy"]
        row = f"| {variant} | {acc['n']} | {_pct(acc['mean'])} ± {_pct(acc['std'], plain=True)} "
        row += f"| {_interval(acc, _pct)} "
        if has_last:
            row += f"| {_pct(e['last_epoch_test_accuracy']['mean'])} "
        d = e.get(f"vs_{baseline}")
        if d is None:
            row += "| (baseline) | | | | |"
        else:
            p, holm = (_p(d["p_value"]), _p(d["p_holm"]))
            row += f"| {_points(d['mean_diff'])} | {_interval(d, _points)} | {p} | {holm} | {d['verdict']} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


FORMATS = {"pytorch": "PyTorch fp32", "onnx": "ONNX fp32", "int8": "ONNX int8"}


def compression_table(export_quality: Tree, export_speed: Tree) -> str:
    """A markdown table of every model (the teacher, each variant; means over seeds) in every
    format it was exported to: what each format keeps of the model and what it costs to run."""
    quality, timing = rows(export_quality), rows(export_speed)
    lines = [
        "| model | format | test accuracy | agrees with teacher | agrees with fp32 | size "
        "| FLOPs / image | latency p50 / p95 | throughput |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, per_seed in quality.items():
        for fmt, label in FORMATS.items():
            q = {s: m[fmt] for s, m in per_seed.items() if fmt in m}
            if not q:
                continue
            t = {s: m[fmt] for s, m in timing[name].items()}
            agreement = mean_of(q, "teacher_agreement")
            lines.append(
                f"| {name} | {label} | {_pct(mean_of(q, 'test_accuracy'))} "
                f"| {'' if agreement is None else _pct(agreement)} "
                f"| {_pct(mean_of(q, 'fp32_agreement'))} | {mean_of(q, 'size_bytes') / 1e6:.2f} MB "
                f"| {mean_of(q, 'flops') / 1e6:.1f} M "
                f"| {mean_of(t, 'latency_ms_p50'):.2f} / {mean_of(t, 'latency_ms_p95'):.2f} ms "
                f"| {mean_of(t, 'throughput'):,.0f}/s |"
            )
    return "\n".join(lines) + "\n"


def format_points(export_quality: Tree, export_speed: Tree) -> dict[str, dict[str, float]]:
    """Per model and format ("kd, ONNX int8"): mean test accuracy and median latency over seeds."""
    quality, timing = rows(export_quality), rows(export_speed)
    points = {}
    for name, per_seed in quality.items():
        for fmt, label in FORMATS.items():
            if all(fmt in m for m in per_seed.values()):
                points[f"{name}, {label}"] = {
                    "test_accuracy": mean_of({s: m[fmt] for s, m in per_seed.items()}, "test_accuracy"),
                    "latency_ms_p50": mean_of({s: m[fmt] for s, m in timing[name].items()},
                                              "latency_ms_p50"),
                }  # fmt: skip
    return points


def pareto_front(points: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The points that no other point beats on both accuracy (higher) and latency (lower), by
    latency: the best accuracy there is at each latency."""

    def dominated(a: Mapping[str, float]) -> bool:
        return any(
            b["test_accuracy"] >= a["test_accuracy"] and b["latency_ms_p50"] <= a["latency_ms_p50"]
            and (b["test_accuracy"], b["latency_ms_p50"]) != (a["test_accuracy"], a["latency_ms_p50"])
            for b in points.values()
        )  # fmt: skip

    front = [name for name, a in points.items() if not dominated(a)]
    return sorted(front, key=lambda name: points[name]["latency_ms_p50"])


# The per-epoch quantities that DVC's plots overlay across models (see curve_tables).
CURVES = ("train_ce", "train_accuracy", "monitored_accuracy")


def curve_tables(curves: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, list[dict]]:
    """Per quantity of CURVES, one row per model and epoch, {"epoch", "model", <quantity>}, from
    each model's per-epoch records: DVC draws one line per model. monitored_accuracy is the test
    accuracy, or the validation accuracy when there is a validation split (the training precision's,
    as monitored after each epoch)."""
    tables: dict[str, list[dict]] = {name: [] for name in CURVES}
    for model, rows in curves.items():
        for row in rows:
            monitored = row.get("val_accuracy", row.get("test_accuracy"))
            values = {"train_ce": row["train_ce"], "train_accuracy": row["train_accuracy"],
                      "monitored_accuracy": monitored}  # fmt: skip
            for name in CURVES:
                tables[name].append({"epoch": row["epoch"], "model": model, name: values[name]})
    return tables


def last_epoch_tree(train_metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Tree | None:
    """The last epoch's test accuracy per student, shaped like the evaluation tree; None when the
    models are the last epoch's anyway (no validation split)."""
    if not all(
        "last_epoch_test_accuracy" in m for per in train_metrics.values() for m in per.values()
    ):
        return None
    return {
        "students": {
            v: {s: {"test_accuracy": m["last_epoch_test_accuracy"]} for s, m in per.items()}
            for v, per in train_metrics.items()
        }
    }


def _pct(value: float | None, plain: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}" + ("" if plain else " %")


def _interval(s: Mapping[str, Any], fmt) -> str:
    if s["ci_low"] is None:
        return "n/a"
    return f"[{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def _points(delta: float) -> str:
    return f"{100 * delta:+.2f} pt"
