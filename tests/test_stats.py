"""Statistics over seeds on numbers whose answers are known."""

import math

import pytest
from scipy import stats as scipy_stats

from pipeline.stats import (
    GAIN,
    LOSS,
    NO_DIFFERENCE,
    TOO_FEW,
    adjust_for_many,
    holm,
    paired,
    summary,
)


def test_summary_mean_std_and_t_interval():
    s = summary([0.70, 0.72, 0.74])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.72) and s["std"] == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2)
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(0.72 - half), pytest.approx(0.72 + half))


def test_one_seed_has_a_mean_and_nothing_else():
    assert summary([0.7]) == {"n": 1, "mean": 0.7, "std": None, "ci_low": None, "ci_high": None}
    assert paired([0.71], [0.70])["verdict"] == TOO_FEW


def test_paired_difference_matches_the_paired_t_test():
    kd, ce = [0.71, 0.73, 0.70, 0.74, 0.72], [0.70, 0.715, 0.69, 0.725, 0.705]
    d = paired(kd, ce)
    assert d["mean_diff"] == pytest.approx(0.013)
    assert d["p_value"] == pytest.approx(scipy_stats.ttest_rel(kd, ce).pvalue)
    assert d["p_value"] < 0.05 and d["verdict"] == GAIN and d["ci_low"] > 0
    assert paired(ce, kd)["verdict"] == LOSS


def test_noise_is_no_detectable_difference():
    d = paired([0.70, 0.72, 0.69, 0.73], [0.71, 0.70, 0.72, 0.71])
    assert d["verdict"] == NO_DIFFERENCE and d["ci_low"] < 0 < d["ci_high"]


def test_identical_differences_do_not_divide_by_zero():
    assert paired([0.7, 0.8], [0.7, 0.8])["verdict"] == NO_DIFFERENCE
    assert paired([0.75, 0.5], [0.5, 0.25])["p_value"] == 0.0  # exact in binary: same differences


def test_holm_adjusts_each_p_value_by_its_rank_and_keeps_them_monotone():
    # Holm by hand for m = 4: sorted p (0.01, 0.02, 0.03, 0.04) times (4, 3, 2, 1) = (0.04, 0.06,
    # 0.06, 0.04); each then at least the one before it (step-down): 0.04, 0.06, 0.06, 0.06.
    adjusted = holm({"a": 0.03, "b": 0.01, "c": 0.04, "d": 0.02, "e": None})
    assert adjusted == {"a": pytest.approx(0.06), "b": pytest.approx(0.04),
                        "c": pytest.approx(0.06), "d": pytest.approx(0.06), "e": None}  # fmt: skip
    assert holm({"a": 0.5, "b": 0.9}) == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_a_raw_gain_that_does_not_survive_many_comparisons_is_no_detectable_difference():
    ce = [0.70, 0.71, 0.69, 0.72, 0.70]
    lucky = [0.72, 0.72, 0.71, 0.73, 0.71]  # a small gain: p < 0.05 alone
    noise = {f"v{i}": paired([a + (0.01 if (i + j) % 2 else -0.01) for j, a in enumerate(ce)], ce)
             for i in range(11)}  # fmt: skip
    comparisons = {"lucky": paired(lucky, ce), **noise}
    raw = comparisons["lucky"]["p_value"]
    assert raw < 0.05 and comparisons["lucky"]["verdict"] == GAIN
    adjust_for_many(comparisons)
    lucky_result = comparisons["lucky"]
    assert lucky_result["p_value"] == raw  # the raw one is kept beside
    assert lucky_result["p_holm"] == pytest.approx(min(1.0, 12 * raw))  # smallest: times m = 12
    assert lucky_result["verdict"] == NO_DIFFERENCE
