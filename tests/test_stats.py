"""Statistics over seeds on numbers whose answers are known."""

import math

import pytest
from scipy import stats as scipy_stats

from pipeline.stats import GAIN, LOSS, NO_DIFFERENCE, TOO_FEW, paired, summary


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
