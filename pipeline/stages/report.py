"""Stage `report`: what distillation bought, from the evaluation metrics and the training curves.

Writes reports/comparison.md (the comparison table, means over seeds, the statistics table: each
variant against the CE-only student, paired by seed, with a verdict, and the compression table:
every model in every format the export stage made), reports/statistics.json, reports/tradeoff.png
(accuracy against parameters and latency), reports/pareto.png (accuracy against latency, every
model in every format, the Pareto front marked) and reports/curves.png (per-epoch curves of every
model), and logs them, with each variant's mean and paired difference, on the run
that groups the pipeline invocation. In the MLflow model registry: registers the best student (by
registry.select_by, or by validation accuracy when there is a validation split) as `challenger`,
moves `champion` to it only when it beats the champion on the same data, and registers its teacher;
registers the ONNX forms of both (the student's int8 too) and points `champion-int8` at the int8
form of the champion.
Reads the variants, seeds, teacher.seeds, data.{test,val}_size and registry.
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

from pipeline import champion, figures, files, losses, params, report, tracking
from pipeline.stages import _inputs, _outputs
from pipeline.stages._cli import no_arguments, run

CHAMPION, CHALLENGER = "champion", "challenger"


def main(p: params.Params, args: list[str]) -> None:
    no_arguments(args)
    curve_files = {name: _outputs.CURVES_DIR / f"{name}.json" for name in report.CURVES}
    outputs = files.OutputSet([_outputs.REPORT, _outputs.STATISTICS, _outputs.TRADEOFF_PLOT,
                               _outputs.CURVES_PLOT, _outputs.PARETO_PLOT,
                               *curve_files.values()])  # fmt: skip
    outputs.check()
    # Validation only, when there is a validation split: the test set must not pick the model.
    select_by = "val_accuracy" if p.data.val_size else p.registry.select_by
    evaluation, speed = _evaluation(p, select_by)
    exported = _exported(p)
    # The plain student, that every variant is compared with: the first that learns without a
    # teacher (the registry says which methods those are).
    baseline = next(
        (v.name for v in p.variants.values() if not losses.get(v.method).needs_teacher), None
    )
    best = report.best_student(evaluation, select_by)
    train = _train_metrics(p)
    table_stats = report.statistics(evaluation, baseline, report.last_epoch_tree(train))
    text = _comparison_text(p, (evaluation, speed), baseline, best, table_stats, select_by)
    text += _compression_text(exported)
    points = report.format_points(*exported)
    curves = _mean_curves(p)
    rendered = {
        _outputs.REPORT: text.encode(),
        _outputs.STATISTICS: files.json_bytes(table_stats),
        _outputs.TRADEOFF_PLOT: _png(figures.tradeoff(_points(evaluation, speed))),
        _outputs.CURVES_PLOT: _png(figures.curves(curves)),
        _outputs.PARETO_PLOT: _png(figures.pareto(points, report.pareto_front(points))),
    }
    tables = report.curve_tables({name: rows for name, rows in curves.items() if rows})
    student, teacher = _to_register(p, evaluation, best, select_by)
    used = {"baseline": baseline, "select_by": select_by, "registry": vars(p.registry)}
    with tracking.stage_run("report", p.mlflow.experiment, used, p.data.md5) as r:
        # The parent groups the invocation: with the results on it, its row in the UI shows them.
        _log_artifacts(r, {k: v for k, v in rendered.items() if k != _outputs.STATISTICS})
        rendered |= {
            curve_files[name]: files.json_bytes(rows, compact=True) for name, rows in tables.items()
        }
        r.log_metrics(_per_variant(table_stats, baseline), to_parent=True)
        verdicts = {f"verdict.{v}": e[f"vs_{baseline}"]["verdict"]
                    for v, e in table_stats.items() if f"vs_{baseline}" in e}  # fmt: skip
        r.set_tags(verdicts, to_parent=True)
        register(r, teacher)
        r.set_tags({"champion": promote_if_better(r, student, select_by)}, to_parent=True)
        _register_exports(r, exported[0], student, teacher)
        follows = tracking.follow_alias(
            p.registry.student, CHAMPION, "int8", champion.CHAMPION_INT8
        )
        r.set_tags({"champion_int8": follows}, to_parent=True)
        print(follows)
        with outputs.commit() as staged:  # last, and together: a failure leaves none of them
            for path, blob in rendered.items():
                staged.write_bytes(path, blob)
    print(text)


def _comparison_text(
    p: params.Params,
    measured: tuple[dict, dict],
    baseline: str | None,
    best: tuple[str, str],
    table_stats: dict,
    select_by: str,
) -> str:
    """reports/comparison.md: the models' table, then the statistics table, each with its key."""
    evaluation, speed = measured
    return (
        f"{report.comparison_table(evaluation, speed, baseline, best)}\n"
        f"Means over seeds {', '.join(map(str, p.seeds))}. Best student by {select_by}: "
        f"**{best[0]}**, seed {best[1]} (registered as the challenger). Speed-up is the "
        "teacher's median batch-1 CPU latency over the model's; throughput is at batch 256.\n\n"
        f"{report.statistics_table(table_stats, baseline)}\n"
        "Paired by seed (same initial weights, same batches); 95 % intervals from Student's t; "
        "p-value of the two-sided paired t-test; "
        f"{_holm_key(_comparisons(table_stats, baseline), baseline)}\n"
    )


def _compression_text(exported: tuple[dict, dict]) -> str:
    return (
        "\n## Compression: every model in every format\n\n"
        f"{report.compression_table(*exported)}\n"
        "Measured by the export stage, all formats of a model in one process (so PyTorch's latency "
        "may differ a little from the table above); agreement with fp32 is with the PyTorch "
        "model's predictions; FLOPs by torch's counter (a multiply-add is 2). "
        "reports/pareto.png plots accuracy against latency with the Pareto front.\n"
    )


# What the report reads of each model in reports/evaluation.json and reports/speed.json.
QUALITY = ("test_accuracy", "ece", "parameters", "weights_bytes")
AGAINST_TEACHER = ("teacher_agreement", "teacher_kl")  # students only
SPEED = ("latency_ms_p50", "latency_ms_p95", "throughput")


def _evaluation(p: params.Params, select_by: str) -> tuple[dict, dict]:
    """reports/evaluation.json and reports/speed.json, checked to hold, for every model params
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


# ... and in reports/export.json and reports/export_speed.json, of each format.
EXPORTED = ("test_accuracy", "fp32_agreement", "size_bytes", "flops")


def _exported(p: params.Params) -> tuple[dict, dict]:
    """reports/export.json and reports/export_speed.json, checked to hold every figure the
    compression table reads, for every model and format params lists."""
    teachers = [(("teacher", str(s)), ("pytorch", "onnx")) for s in p.teacher.seeds]
    students = [(("students", v, str(s)), tuple(report.FORMATS)) for v in p.variants
                for s in p.seeds]  # fmt: skip
    quality = [(*w, f, k) for w, formats in teachers + students for f in formats for k in EXPORTED]
    timing = [(*w, f, k) for w, formats in teachers + students for f in formats for k in SPEED]
    return (
        _inputs.json_file(_outputs.EXPORT, "export", tuple(quality)),
        _inputs.json_file(_outputs.EXPORT_SPEED, "export", tuple(timing)),
    )


def _train_metrics(p: params.Params) -> dict[str, dict[str, dict]]:
    """reports/train/<variant>-<seed>.json of every student, by variant and seed."""
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


class ToRegister(NamedTuple):
    role: str
    weights_md5: str  # what finds, in MLflow, the run that logged the model
    name: str  # the registered model
    tags: dict[str, str]
    where: tuple[str, ...]  # its figures in the report's trees: ("students", variant, seed), ...


def register(r: tracking.StageRun, model: ToRegister) -> tracking.Version | None:
    """`model` as a version of its registered model; None (and a warning) when no run logged it."""
    version = tracking.register(r.experiment_id, model.weights_md5, model.name, model.tags)
    if version is None:
        print(f"warning: no finished MLflow run logged {_outputs.model(model.role)} (MD5 "
              f"{model.weights_md5}), so it was not registered; `dvc repro -f "
              f"{_outputs.stage_of(model.role)}` to log it again", file=sys.stderr)  # fmt: skip
    else:
        print(f"registered {model.role} as {model.name} version {version.version}")
    return version


def promote_if_better(r: tracking.StageRun, student: ToRegister, select_by: str) -> str:
    """Register the best student as `challenger`; move `champion` to it only if it beats the
    champion on `select_by`, measured on the same data. Returns the line that says what happened."""
    challenger = register(r, student)
    if challenger is None:
        return "champion unchanged: the best student was not registered"
    tracking.set_alias(student.name, CHALLENGER, challenger.version)
    current = tracking.by_alias(student.name, CHAMPION)
    move, message = champion.decide(
        champion.standing(challenger.version, challenger.tags, select_by),
        None if current is None else champion.standing(current.version, current.tags, select_by),
        select_by,
        student.name,
    )
    if move:
        tracking.set_alias(student.name, CHAMPION, challenger.version)
    print(message)
    return message


def _register_exports(
    r: tracking.StageRun, export_quality: dict, student: ToRegister, teacher: ToRegister
) -> None:
    """The ONNX forms of the best student (fp32, int8) and of its teacher, as versions of their
    registered models, tagged with their format and that format's test accuracy."""
    forms = [(student, "onnx"), (student, "int8"), (teacher, "onnx")]
    for model, fmt in forms:
        accuracy = _node(export_quality, model.where)[fmt]["test_accuracy"]
        tags = {"role": model.role, "test_accuracy": repr(accuracy)}
        version = tracking.register(r.experiment_id, model.weights_md5, model.name, tags, fmt)
        if version is None:
            print(f"warning: no MLflow run logged the {fmt} export of {model.role}; `dvc repro "
                  "-f export` to log it again", file=sys.stderr)  # fmt: skip
        else:
            print(f"registered {model.role} ({fmt}) as {model.name} version {version.version}")


def _node(tree: dict, where: tuple[str, ...]) -> dict:
    """One model's figures in a report tree: tree["teacher"][seed], tree["students"][v][seed]."""
    for key in where:
        tree = tree[key]
    return tree


def _to_register(
    p: params.Params, evaluation: dict, best: tuple[str, str], select_by: str
) -> tuple[ToRegister, ToRegister]:
    """The best student (with its selection figure and the data it was measured on) and its
    teacher. The weights are read now, before the report's run opens."""
    variant, seed = best
    student_role = _outputs.student_role(variant, seed)
    teacher_seed = p.teacher_seed(int(seed))
    teacher_role = _outputs.teacher_role(teacher_seed)
    measured_on = champion.evaluation_data(_inputs.md5(_outputs.DATA, "download"),
                                           p.data.test_size, p.data.val_size)  # fmt: skip
    where = {
        student_role: ("students", variant, seed),
        teacher_role: ("teacher", str(teacher_seed)),
    }
    made = {}
    for role, name in ((student_role, p.registry.student), (teacher_role, p.registry.teacher)):
        figures_of = _node(evaluation, where[role])
        value = figures_of.get(select_by, figures_of["test_accuracy"])
        tags = {"role": role, "test_accuracy": repr(figures_of["test_accuracy"]),
                **champion.version_tags(value, select_by, measured_on)}  # fmt: skip
        made[role] = ToRegister(role, _inputs.md5(_outputs.model(role), _outputs.stage_of(role)),
                                name, tags, where[role])  # fmt: skip
    return made[student_role], made[teacher_role]


def _per_variant(table: dict, baseline: str | None) -> dict[str, float]:
    """What the invocation's run shows per variant: mean test accuracy over seeds and, against
    the baseline, the mean paired difference and its p-value (a section of charts each)."""
    shown = {}
    for variant, e in table.items():
        shown[f"mean_test_accuracy/{variant}"] = e["test_accuracy"]["mean"]
        versus = e.get(f"vs_{baseline}")
        if versus is not None:
            shown[f"vs_{baseline}/{variant}"] = versus["mean_diff"]
            if versus["p_value"] is not None:
                shown[f"p_value/{variant}"] = versus["p_value"]
                shown[f"p_holm/{variant}"] = versus["p_holm"]
    return shown


def _holm_key(comparisons: int, baseline: str | None) -> str:
    if not comparisons:  # one seed: no p-values to adjust
        return "with one seed there are no p-values (list more in seeds)."
    return (f"Holm p: adjusted by Holm-Bonferroni over the {comparisons} comparisons with "
            f"{baseline}; verdict at Holm p < 0.05.")  # fmt: skip


def _comparisons(table: dict, baseline: str | None) -> int:
    """How many variants have a p-value against the baseline: the family Holm adjusts over."""
    return sum(
        1 for e in table.values() if (e.get(f"vs_{baseline}") or {}).get("p_value") is not None
    )


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
