"""Stage `report`: what distillation bought, from the evaluation metrics and the training curves.

Writes reports/comparison.md (the table), reports/tradeoff.png (accuracy against parameters and
latency) and reports/curves.png (per-epoch loss and accuracy of every model), and logs them, with
the headline metrics, on the run that groups the pipeline invocation. Registers the teacher and the
best student by registry.select_by (alias `champion`) in the MLflow model registry. Reads the
variants (the CE-only one is the baseline) and registry.
"""

from __future__ import annotations

import json
import sys

from pipeline import figures, files, params, report, tracking
from pipeline.stages import _outputs
from pipeline.stages._cli import run

CHAMPION = "champion"


def main() -> None:
    p = params.load_all()
    evaluation = json.loads(_outputs.EVALUATION.read_text())
    speed = json.loads(_outputs.SPEED.read_text())
    roles = list(report.models_of(evaluation))
    histories = {role: json.loads(_outputs.train_history(role).read_text()) for role in roles}
    baseline = next((v.name for v in p.variants.values() if v.method == "ce"), None)
    best = report.champion(evaluation, p.registry.select_by)
    table = report.comparison_table(evaluation, speed, baseline, best)
    text = (
        f"{table}\nChampion by {p.registry.select_by}: **{best}**. Speed-up is the teacher's "
        "median batch-1 CPU latency over the model's; throughput is at batch 256.\n"
    )
    points = {
        role: {**q, **report.models_of(speed)[role]}
        for role, q in report.models_of(evaluation).items()
    }
    used = {"baseline": baseline, "registry": vars(p.registry)}
    with tracking.stage_run("report", p.mlflow.experiment, used, p.data.md5) as r:
        with files.atomic_path(_outputs.REPORT) as tmp:
            tmp.write_text(text)
        for path, fig in (
            (_outputs.TRADEOFF_PLOT, figures.tradeoff(points)),
            (_outputs.CURVES_PLOT, figures.curves(histories)),
        ):
            with files.atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            figures.close(fig)
        # The parent groups the invocation: with the results on it, its row in the UI shows them.
        for path in (_outputs.REPORT, _outputs.TRADEOFF_PLOT, _outputs.CURVES_PLOT):
            r.log_artifact(path, to_parent=True)
        r.log_metrics(evaluation, to_parent=True)
        r.log_metrics(speed, to_parent=True)
        register(r, p, evaluation, best)
    print(text)


def register(r: tracking.StageRun, p: params.Params, evaluation: dict, best: str) -> None:
    """The teacher under its name; the champion as a version of the student's, alias `champion`."""
    for role, name, alias in (
        ("teacher", p.registry.teacher, None),
        (best, p.registry.student, CHAMPION),
    ):
        md5 = files.md5(_outputs.model(role).read_bytes())
        metrics = report.models_of(evaluation)[role]
        keys = {"test_accuracy", p.registry.select_by} & metrics.keys()
        tags = {"role": role, **{key: str(metrics[key]) for key in sorted(keys)}}
        version = r.register_model(md5, name, alias, tags)
        if version is None:
            print(f"warning: no finished MLflow run logged {_outputs.model(role)} (MD5 {md5}), so it "
                  f"was not registered; `dvc repro -f` its stage to log it again", file=sys.stderr)  # fmt: skip
        else:
            print(
                f"registered {role} as {name} version {version}" + (f" @{alias}" if alias else "")
            )


if __name__ == "__main__":
    run(main)
