"""Statistics over seeds, in one place: the report (``experiments.report``) and ``benchmarks/quality.py`` use it.

* ``welch(a, b)``: Welch's two-sample t-test (unequal variances) of H0: mean(a) = mean(b), two-sided, and the
  (1 - 2 alpha) confidence interval of mean(a) - mean(b) (``scipy.stats.ttest_ind(..., equal_var=False)``).
* ``tost(a, b, margin)``: the two one-sided Welch t-tests of H0: |mean(a) - mean(b)| >= margin (equivalence within
  +-margin). scipy has no TOST; it is two calls of the same ``ttest_ind``, each with the null hypothesis shifted by
  the margin: H0 d <= -margin (alternative "greater" on a + margin against b) and H0 d >= +margin (alternative
  "less" on a - margin against b). ``p_equivalence`` is the larger p-value; equivalence is shown when it is below
  alpha, which is the same as the (1 - 2 alpha) confidence interval lying inside (-margin, margin).
* ``compare_means(a, b, margin)``: both, with the guards: at least 2 values per side and some spread, otherwise
  no p-value and a ``reason``.

The seeds are the samples. ``margin`` is in the metric's own unit (0.02 = 2 points of an accuracy in [0, 1]).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Comparison:
    """mean(a) - mean(b) and the two tests (``None`` where they are undefined; ``reason`` says why)."""

    n_a: int
    n_b: int
    margin: float
    alpha: float
    difference: float | None
    p_difference: float | None  # Welch, two-sided
    p_equivalence: float | None  # TOST: the larger of the two one-sided p-values
    ci: tuple[float, float] | None  # (1 - 2 alpha) interval of the difference
    distinguishable: bool
    equivalent: bool
    reason: str | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = list(self.ci) if self.ci is not None else None
        return out


def welch(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> tuple[float, float, tuple[float, float]]:
    """Welch's t statistic, its two-sided p-value and the (1 - 2 alpha) confidence interval of mean(a) - mean(b)."""
    from scipy import stats

    result = stats.ttest_ind(list(a), list(b), equal_var=False)
    ci = result.confidence_interval(confidence_level=1 - 2 * alpha)
    return float(result.statistic), float(result.pvalue), (float(ci.low), float(ci.high))


def tost(a: Sequence[float], b: Sequence[float], margin: float) -> tuple[float, float, float]:
    """Two one-sided Welch t-tests of H0: |mean(a) - mean(b)| >= margin.

    Returns ``(p_lower, p_upper, p_equivalence)``: H0 d <= -margin, H0 d >= +margin, and the larger of the two."""
    from scipy import stats

    if margin <= 0:
        raise ValueError(f"margin={margin}: the equivalence margin must be > 0 (in the metric's unit)")
    lower = stats.ttest_ind([x + margin for x in a], list(b), equal_var=False, alternative="greater")
    upper = stats.ttest_ind([x - margin for x in a], list(b), equal_var=False, alternative="less")
    return float(lower.pvalue), float(upper.pvalue), float(max(lower.pvalue, upper.pvalue))


def compare_means(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> Comparison:
    """Is mean(a) different from mean(b) (Welch), and equal to it within +-``margin`` (TOST)? See the module doc."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    diff = (statistics.mean(a) - statistics.mean(b)) if a and b else None
    reason = None
    if len(a) < 2 or len(b) < 2:
        reason = "needs at least 2 seeds per method"
    elif statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        reason = "no spread over the seeds on either side: the t-test is undefined"
    if reason is not None:
        return Comparison(len(a), len(b), margin, alpha, diff, None, None, None, False, False, reason)
    _, p_diff, ci = welch(a, b, alpha)
    _, _, p_equiv = tost(a, b, margin)
    return Comparison(len(a), len(b), margin, alpha, diff, p_diff, p_equiv, ci, p_diff < alpha, p_equiv < alpha, None)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """median, mean, sample standard deviation (None below 2 values) and n."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "mean": None, "std": None, "n": 0}
    return {
        "median": float(statistics.median(values)),
        "mean": float(statistics.mean(values)),
        "std": float(statistics.stdev(values)) if len(values) > 1 else None,
        "n": len(values),
    }
