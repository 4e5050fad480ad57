"""Stage `report`: the comparison table from metrics/evaluation.json, written to reports/ and logged
on the run that groups the pipeline invocation. Reads the variants (to find the CE-only baseline)."""

from __future__ import annotations

import json

from pipeline import files, params, report, tracking
from pipeline.stages import _outputs
from pipeline.stages._cli import run


def main() -> None:
    p = params.load_all()
    evaluation = json.loads(_outputs.EVALUATION.read_text())
    baseline = next((v.name for v in p.variants.values() if v.method == "ce"), None)
    table = report.comparison_table(evaluation, baseline)
    with tracking.stage_run("report", p.mlflow.experiment, {"baseline": baseline}, p.data.md5) as r:
        with files.atomic_path(_outputs.REPORT) as tmp:
            tmp.write_text(table)
        r.log_artifact(_outputs.REPORT)
        # The parent groups the invocation: with the results on it, its row in the UI shows them.
        r.log_artifact(_outputs.REPORT, to_parent=True)
        r.log_metrics(evaluation, to_parent=True)
    print(table)


if __name__ == "__main__":
    run(main)
