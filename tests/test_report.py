"""The comparison and statistics tables and the champion's selection, from metrics made up by hand."""

import pytest

from pipeline.report import (
    best_student,
    comparison_table,
    last_epoch_tree,
    statistics,
    statistics_table,
)


def model(acc, params, extra=None):
    return {"test_accuracy": acc, "per_class_accuracy": {}, "ece": 0.05, "parameters": params,
            "weights_bytes": 4 * params, **(extra or {})}  # fmt: skip


def student(acc, agreement, kl):
    return model(acc, 250_000, {"teacher_agreement": agreement, "teacher_kl": kl})


EVALUATION = {
    "teacher": {"1": model(0.80, 1_000_000)},
    "students": {
        "ce": {"1": student(0.70, 0.75, 0.40), "2": student(0.72, 0.75, 0.40)},
        "kd": {"1": student(0.72, 0.80, 0.20), "2": student(0.74, 0.80, 0.20)},
        "cosine": {"1": student(0.69, 0.85, 0.30), "2": student(0.73, 0.90, 0.30)},
    },
}
TIMING = {"latency_ms_p50": 1.0, "latency_ms_p95": 1.5, "throughput": 8000.0}
SPEED = {
    "teacher": {"1": {"latency_ms_p50": 4.0, "latency_ms_p95": 5.0, "throughput": 1000.0}},
    "students": {v: {"1": TIMING, "2": TIMING} for v in EVALUATION["students"]},
}


@pytest.mark.parametrize(
    ("metric", "best"),
    [
        ("test_accuracy", ("kd", "2")),
        ("teacher_agreement", ("cosine", "2")),
        ("teacher_kl", ("kd", "1")),
    ],
)
def test_the_best_student_is_one_model_chosen_in_the_metrics_direction(metric, best):
    assert best_student(EVALUATION, metric) == best


def test_comparison_rows_are_means_over_seeds():
    table = comparison_table(EVALUATION, SPEED, baseline="ce", best=("kd", "2"))
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert list(rows) == ["teacher", "ce", "**kd** (best: seed 2)", "cosine"]
    assert "| 2 | 73.00% | +2.00 pt | 80.00% | 0.200 |" in rows["**kd** (best: seed 2)"]
    assert "| 2 | 71.00% | +0.00 pt | 87.50% |" in rows["cosine"]
    assert "| 2 | 71.00% |  |" in rows["ce"]  # the baseline has no difference to itself
    assert "| 1,000,000 | 4.00 MB | 4.00 / 5.00 ms | 1.0x | 1,000/s |" in rows["teacher"]
    assert "| 1.00 / 1.50 ms | 4.0x | 8,000/s |" in rows["ce"]


def test_statistics_pair_variants_with_the_baseline_by_seed():
    s = statistics(EVALUATION, "ce")
    assert s["kd"]["test_accuracy"]["mean"] == pytest.approx(0.73)
    assert s["kd"]["vs_ce"]["mean_diff"] == pytest.approx(0.02)
    assert s["kd"]["vs_ce"]["p_value"] == 0.0  # +2 points on both seeds: no spread
    assert s["cosine"]["vs_ce"]["mean_diff"] == pytest.approx(0.0)
    assert "vs_ce" not in s["ce"]
    table = statistics_table(s, "ce")
    assert "| kd | 2 | 73.00 % ± 1.41 |" in table and "| +2.00 pt |" in table
    assert "| ce | 2 | 71.00 % ± 1.41 |" in table and "(baseline)" in table
    # kd and cosine are the family: p 0 and 1, Holm-adjusted 0 (x 2) and 1; kd's verdict on it
    assert s["kd"]["vs_ce"]["p_holm"] == 0.0 and s["cosine"]["vs_ce"]["p_holm"] == 1.0
    assert (
        "| 0.000 | 0.000 | gain |" in table
        and "| 1.000 | 1.000 | no detectable difference |" in table
    )


def test_last_epoch_accuracy_appears_only_with_a_validation_split():
    no_val = {"ce": {"1": {"test_accuracy": 0.7}}}
    assert last_epoch_tree(no_val) is None
    with_val = {
        v: {s: {"last_epoch_test_accuracy": 0.6} for s in per}
        for v, per in EVALUATION["students"].items()
    }
    s = statistics(EVALUATION, "ce", last_epoch_tree(with_val))
    assert s["kd"]["last_epoch_test_accuracy"]["mean"] == pytest.approx(0.6)
    assert "last-epoch test accuracy" in statistics_table(s, "ce")
