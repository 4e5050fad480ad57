"""Statistics over seeds: is a variant's difference to the CE-only student real or noise?

Per variant: mean, sample standard deviation and the 95 % confidence interval (Student's t) of test
accuracy over seeds. Against the baseline: the paired differences seed by seed (same initial
weights, same batches), their mean, 95 % interval and the two-sided paired t-test's p-value. With
a dozen variants, some would pass p < 0.05 by chance alone, so the verdicts rest on the p-values
adjusted for the family of comparisons by Holm's step-down method (it keeps the chance of any
false gain at 5 % and never rejects less than Bonferroni). Plain values; no I/O.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE

GAIN, NO_DIFFERENCE, LOSS, TOO_FEW = "gain", "no detectable difference", "loss", "too few seeds"


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std and the 95 % interval of the mean (None where one value cannot give them)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = statistics.stdev(values)
    half = scipy_stats.t.ppf(1 - ALPHA / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired(
    values: Sequence[float], baseline: Sequence[float]
) -> dict[str, float | int | str | None]:
    """The difference values - baseline, paired by seed: summary, p-value and a verdict."""
    if len(values) != len(baseline):
        raise ValueError(f"paired samples differ in size: {len(values)} and {len(baseline)}")
    diffs = [v - b for v, b in zip(values, baseline, strict=True)]
    s = summary(diffs)
    p_value = None
    if len(diffs) >= 2:
        if all(d == diffs[0] for d in diffs):  # no spread: the t statistic is undefined
            p_value = 1.0 if diffs[0] == 0 else 0.0
        else:
            p_value = float(scipy_stats.ttest_rel(values, baseline).pvalue)
    return {
        "n": s["n"],
        "mean_diff": s["mean"],
        "ci_low": s["ci_low"],
        "ci_high": s["ci_high"],
        "p_value": p_value,
        "verdict": verdict(s["mean"], p_value),
    }


def verdict(mean_diff: float, p_value: float | None) -> str:
    if p_value is None:
        return TOO_FEW
    if p_value >= ALPHA:
        return NO_DIFFERENCE
    return GAIN if mean_diff > 0 else LOSS


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Each comparison's p-value adjusted by Holm-Bonferroni over all of them (None, where a
    comparison has too few seeds for one, stays None and is not counted)."""
    known = {name: p for name, p in p_values.items() if p is not None}
    adjusted = dict.fromkeys(p_values)
    if known:
        corrected = multipletests(list(known.values()), alpha=ALPHA, method="holm")[1]
        adjusted |= {name: float(p) for name, p in zip(known, corrected, strict=True)}
    return adjusted


def adjust_for_many(comparisons: Mapping[str, dict]) -> None:
    """Add `p_holm` to each of `paired`'s results and base its verdict on it, in place."""
    adjusted = holm({name: c["p_value"] for name, c in comparisons.items()})
    for name, c in comparisons.items():
        c["p_holm"] = adjusted[name]
        c["verdict"] = verdict(c["mean_diff"], adjusted[name])
