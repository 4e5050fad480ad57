"""The comparison table and the champion's selection, from evaluation metrics made up by hand."""

import pytest

from pipeline.report import champion, comparison_table


def model(acc, params, extra=None):
    return {"test_accuracy": acc, "per_class_accuracy": {}, "ece": 0.05, "parameters": params,
            "weights_bytes": 4 * params, **(extra or {})}  # fmt: skip


EVALUATION = {
    "teacher": model(0.80, 1_000_000),
    "students": {
        "ce": model(0.70, 250_000, {"teacher_agreement": 0.75, "teacher_kl": 0.40}),
        "kd": model(0.72, 250_000, {"teacher_agreement": 0.80, "teacher_kl": 0.20}),
        "cosine": model(0.69, 250_000, {"teacher_agreement": 0.85, "teacher_kl": 0.30}),
    },
}
SPEED = {
    "teacher": {"latency_ms_p50": 4.0, "latency_ms_p95": 5.0, "throughput": 1000.0},
    "students": {
        name: {"latency_ms_p50": 1.0, "latency_ms_p95": 1.5, "throughput": 8000.0}
        for name in EVALUATION["students"]
    },
}


@pytest.mark.parametrize(
    ("metric", "best"),
    [("test_accuracy", "kd"), ("teacher_agreement", "cosine"), ("teacher_kl", "kd")],
)
def test_champion_follows_the_metrics_direction(metric, best):
    assert champion(EVALUATION, metric) == best


def test_table_rows_differences_and_speed_ups():
    table = comparison_table(EVALUATION, SPEED, baseline="ce", champion="kd")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert list(rows) == ["teacher", "ce", "**kd** (champion)", "cosine"]
    assert "| 72.00% | +2.00 pt | 80.00% | 0.200 |" in rows["**kd** (champion)"]
    assert "| 69.00% | -1.00 pt |" in rows["cosine"]
    assert "| 70.00% |  |" in rows["ce"]  # the baseline has no difference to itself
    assert "| 1,000,000 | 4.00 MB | 4.00 / 5.00 ms | 1.0x | 1,000/s |" in rows["teacher"]
    assert "| 1.00 / 1.50 ms | 4.0x | 8,000/s |" in rows["ce"]
