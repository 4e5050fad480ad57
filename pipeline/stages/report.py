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

import json
import statistics
import sys

from pipeline import figures, files, params, report, tracking
from pipeline.stages import _outputs
from pipeline.stages._cli import run

CHAMPION = "champion"


def main() -> None:
    p = params.load_all()
    evaluation = json.loads(_outputs.EVALUATION.read_text())
    speed = json.loads(_outputs.SPEED.read_text())
    baseline = next((v.name for v in p.variants.values() if v.method == "ce"), None)
    # Validation only, when there is a validation split: the test set must not pick the model.
    select_by = "val_accuracy" if p.data.val_size else p.registry.select_by
    best = report.champion(evaluation, select_by)
    train = {v: {str(s): _json(_outputs.train_metrics(_outputs.student_role(v, s))) for s in p.seeds}
             for v in p.variants}  # fmt: skip
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
    used = {"baseline": baseline, "select_by": select_by, "registry": vars(p.registry)}
    with tracking.stage_run("report", p.mlflow.experiment, used, p.data.md5) as r:
        with files.atomic_path(_outputs.REPORT) as tmp:
            tmp.write_text(text)
        files.write_json(_outputs.STATISTICS, table_stats)
        for path, fig in (
            (_outputs.TRADEOFF_PLOT, figures.tradeoff(_points(evaluation, speed))),
            (_outputs.CURVES_PLOT, figures.curves(_mean_curves(p))),
        ):
            with files.atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            figures.close(fig)
        # The parent groups the invocation: with the results on it, its row in the UI shows them.
        for path in (_outputs.REPORT, _outputs.TRADEOFF_PLOT, _outputs.CURVES_PLOT):
            r.log_artifact(path, to_parent=True)
        r.log_metrics(evaluation, to_parent=True)
        r.log_metrics(speed, to_parent=True)
        r.log_metrics({"statistics": table_stats}, to_parent=True)
        verdicts = {f"verdict.{v}": e[f"vs_{baseline}"]["verdict"]
                    for v, e in table_stats.items() if f"vs_{baseline}" in e}  # fmt: skip
        r.set_tags(verdicts, to_parent=True)
        register(r, p, evaluation, best, select_by)
    print(text)


def register(
    r: tracking.StageRun, p: params.Params, evaluation: dict, best: tuple[str, str], select_by: str
) -> None:
    """The champion as a version of the student's registered model, alias `champion`; its teacher
    under the teacher's name."""
    variant, seed = best
    teacher_seed = p.teacher_seed(int(seed))
    for role, metrics, name, alias in (
        (_outputs.student_role(variant, seed), evaluation["students"][variant][seed],
         p.registry.student, CHAMPION),
        (_outputs.teacher_role(teacher_seed), evaluation["teacher"][str(teacher_seed)],
         p.registry.teacher, None),
    ):  # fmt: skip
        md5 = files.md5(_outputs.model(role).read_bytes())
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
    roles = {"teacher": [_outputs.teacher_role(s) for s in p.teacher.seeds],
             **{v: [_outputs.student_role(v, s) for s in p.seeds] for v in p.variants}}  # fmt: skip
    curves = {}
    for name, members in roles.items():
        histories = [_json(_outputs.train_history(role)) for role in members]
        curves[name] = [
            {key: statistics.fmean(h[i][key] for h in histories) for key in histories[0][i]}
            for i in range(len(histories[0]))
        ]
    return curves


def _json(path):
    return json.loads(path.read_text())


if __name__ == "__main__":
    run(main)
