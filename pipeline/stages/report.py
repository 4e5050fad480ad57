"""Stage `report`: what distillation bought, from the evaluation metrics and the training curves.

Writes reports/comparison.md (the comparison table, means over seeds, and the statistics table:
each variant against the CE-only student, paired by seed, with a verdict), metrics/statistics.json,
reports/tradeoff.png (accuracy against parameters and latency) and reports/curves.png (per-epoch
loss and accuracy, mean over seeds), and logs them, with the headline metrics, on the run that
groups the pipeline invocation. Registers the champion (the best student by registry.select_by, or
by validation accuracy when there is a validation split) as `champion` and its teacher in the
MLflow model registry. Reads the variants, seeds, teacher.seeds, data.val_size and registry.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
from pathlib import Path

from pipeline import figures, files, losses, params, report, tracking
from pipeline.stages import _inputs, _outputs
from pipeline.stages._cli import no_arguments, run

CHAMPION = "champion"


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    outputs = files.OutputSet(
        [_outputs.REPORT, _outputs.STATISTICS, _outputs.TRADEOFF_PLOT, _outputs.CURVES_PLOT]
    )
    outputs.check()
    # Validation only, when there is a validation split: the test set must not pick the model.
    select_by = "val_accuracy" if p.data.val_size else p.registry.select_by
    evaluation, speed = _evaluation(p, select_by)
    # The plain student, that every variant is compared with: the first that learns without a
    # teacher (the registry says which methods those are).
    baseline = next(
        (v.name for v in p.variants.values() if not losses.get(v.method).needs_teacher), None
    )
    best = report.champion(evaluation, select_by)
    train = _train_metrics(p)
    table_stats = report.statistics(evaluation, baseline, report.last_epoch_tree(train))
    text = (
        f"{report.comparison_table(evaluation, speed, baseline, best)}\n"
        f"Means over seeds {', '.join(map(str, p.seeds))}. Champion by {select_by}: **{best[0]}**, "
        f"seed {best[1]}. Speed-up is the teacher's median batch-1 CPU latency over the model's; "
        "throughput is at batch 256.\n\n"
        f"{report.statistics_table(table_stats, baseline)}\n"
        "Paired by seed (same initial weights, same batches); 95 % intervals from Student's t; "
        "p-value of the two-sided paired t-test; verdict at p < 0.05.\n"
    )
    rendered = {
        _outputs.REPORT: text.encode(),
        _outputs.STATISTICS: files.json_bytes(table_stats),
        _outputs.TRADEOFF_PLOT: _png(figures.tradeoff(_points(evaluation, speed))),
        _outputs.CURVES_PLOT: _png(figures.curves(_mean_curves(p))),
    }
    to_register = _registered(p, evaluation, best)
    # The weights of the models to register, read now rather than after the run has opened.
    md5s = {role: _inputs.md5(_outputs.model(role), _outputs.stage_of(role))
            for role, *_ in to_register}  # fmt: skip
    used = {"baseline": baseline, "select_by": select_by, "registry": vars(p.registry)}
    with tracking.stage_run("report", p.mlflow.experiment, used, p.data.md5) as r:
        # The parent groups the invocation: with the results on it, its row in the UI shows them.
        _log_artifacts(r, {k: v for k, v in rendered.items() if k != _outputs.STATISTICS})
        r.log_metrics(evaluation, to_parent=True)
        r.log_metrics(speed, to_parent=True)
        r.log_metrics({"statistics": table_stats}, to_parent=True)
        verdicts = {f"verdict.{v}": e[f"vs_{baseline}"]["verdict"]
                    for v, e in table_stats.items() if f"vs_{baseline}" in e}  # fmt: skip
        r.set_tags(verdicts, to_parent=True)
        register(r, to_register, md5s, select_by)
        with outputs.commit() as staged:  # last, and together: a failure leaves none of them
            for path, blob in rendered.items():
                staged.write_bytes(path, blob)
    print(text)


# What the report reads of each model in metrics/evaluation.json and metrics/speed.json.
QUALITY = ("test_accuracy", "ece", "parameters", "weights_bytes")
AGAINST_TEACHER = ("teacher_agreement", "teacher_kl")  # students only
SPEED = ("latency_ms_p50", "latency_ms_p95", "throughput")


def _evaluation(p: params.Params, select_by: str) -> tuple[dict, dict]:
    """metrics/evaluation.json and metrics/speed.json, checked to hold, for every model params
    lists, every figure the report reads."""
    teachers = [("teacher", str(s)) for s in p.teacher.seeds]
    students = [("students", v, str(s)) for v in p.variants for s in p.seeds]
    quality = [(*w, k) for w in teachers for k in QUALITY] + [
        (*w, k) for w in students for k in (*QUALITY, *AGAINST_TEACHER, select_by)
    ]
    timing = [(*w, k) for w in teachers + students for k in SPEED]
    return (
        _inputs.json_file(_outputs.EVALUATION, "evaluate", tuple(quality)),
        _inputs.json_file(_outputs.SPEED, "evaluate", tuple(timing)),
    )


def _train_metrics(p: params.Params) -> dict[str, dict[str, dict]]:
    """metrics/train/<variant>-<seed>.json of every student, by variant and seed."""
    needed = (("last_epoch_test_accuracy",),) if p.data.val_size else ()
    return {
        v: {
            str(s): _inputs.json_file(_outputs.train_metrics(role), _outputs.stage_of(role), needed)
            for s in p.seeds
            for role in [_outputs.student_role(v, s)]
        }
        for v in p.variants
    }


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    figures.close(fig)
    return buffer.getvalue()


def _log_artifacts(r: tracking.StageRun, rendered: dict[Path, bytes]) -> None:
    """Log the report's files on the parent run, under their own names."""
    with tempfile.TemporaryDirectory() as folder:
        for path, blob in rendered.items():
            (Path(folder) / path.name).write_bytes(blob)
            r.log_artifact(Path(folder) / path.name, to_parent=True)


def register(
    r: tracking.StageRun, models: list[tuple], md5s: dict[str, str], select_by: str
) -> None:
    """Each of `models` (see _registered) as a version of its registered model, found in MLflow by
    the MD5 of its weights file (`md5s`, by role)."""
    for role, metrics, name, alias in models:
        md5 = md5s[role]
        keys = {"test_accuracy", select_by} & metrics.keys()
        tags = {"role": role, **{key: str(metrics[key]) for key in sorted(keys)}}
        version = r.register_model(md5, name, alias, tags)
        if version is None:
            print(f"warning: no finished MLflow run logged {_outputs.model(role)} (MD5 {md5}), so it "
                  f"was not registered; `dvc repro -f` its stage to log it again", file=sys.stderr)  # fmt: skip
        else:
            print(
                f"registered {role} as {name} version {version}" + (f" @{alias}" if alias else "")
            )


def _registered(
    p: params.Params, evaluation: dict, best: tuple[str, str]
) -> list[tuple[str, dict, str, str | None]]:
    """(role, its metrics, registered model name, alias): the champion, with alias `champion`,
    and its teacher."""
    variant, seed = best
    teacher_seed = p.teacher_seed(int(seed))
    return [
        (_outputs.student_role(variant, seed), evaluation["students"][variant][seed],
         p.registry.student, CHAMPION),
        (_outputs.teacher_role(teacher_seed), evaluation["teacher"][str(teacher_seed)],
         p.registry.teacher, None),
    ]  # fmt: skip


def _points(evaluation: dict, speed: dict) -> dict[str, dict[str, float]]:
    """Per row of the table: mean accuracy, parameters and latency over seeds."""
    q, t = report.rows(evaluation), report.rows(speed)
    return {
        name: {
            "test_accuracy": report.mean_of(q[name], "test_accuracy"),
            "parameters": report.mean_of(q[name], "parameters"),
            "latency_ms_p50": report.mean_of(t[name], "latency_ms_p50"),
        }
        for name in q
    }


def _mean_curves(p: params.Params) -> dict[str, list[dict[str, float]]]:
    """Per-epoch curves of the teacher and of each variant, averaged over their seeds."""
    members = {"teacher": [_outputs.teacher_role(s) for s in p.teacher.seeds],
               **{v: [_outputs.student_role(v, s) for s in p.seeds] for v in p.variants}}  # fmt: skip
    return {name: _mean_curve(roles) for name, roles in members.items()}


def _mean_curve(roles: list[str]) -> list[dict[str, float]]:
    """The mean per epoch of the histories of `roles`, which must have the same epochs and keys."""
    histories = [_inputs.history(_outputs.train_history(r), _outputs.stage_of(r)) for r in roles]
    for role, h in zip(roles, histories, strict=True):
        if [row.keys() for row in h] != [row.keys() for row in histories[0]]:
            path = _outputs.train_history(role)
            raise _inputs.InputError(_inputs.out_of_date(path, _outputs.stage_of(role), (
                f"its epochs or metrics differ from those of {roles[0]}")))  # fmt: skip
    return [
        {key: statistics.fmean(h[i][key] for h in histories) for key in histories[0][i]}
        for i in range(len(histories[0]))
    ]


if __name__ == "__main__":
    run(main)
