"""Statistics of repeated timings: medians, per-repeat ratios and their distribution-free confidence intervals,
spreads, and Welch / TOST comparisons of means."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def median_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over repeats of a_i / b_i (a and b measured in the same repeat)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty series (got {len(a)} and {len(b)})")
    return statistics.median(x / y for x, y in zip(a, b))


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Distribution-free confidence interval of the median: (low, high, coverage).

    For n sorted values x_(1) <= ... <= x_(n), [x_(j), x_(n+1-j)] holds the true median with probability
    1 - 2 P(B <= j - 1), B ~ Binomial(n, 1/2) (each value falls below the median with probability 1/2, whatever
    the distribution). j is the largest whose coverage is at least ``confidence``; with too few values for that
    (n < 6 at 95%) the interval is [min, max] and ``coverage`` says what it really is."""
    from scipy.stats import binom

    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise ValueError("median_ci needs at least one value")
    j = 1
    while j + 1 <= (n + 1) // 2 and 1 - 2 * binom.cdf(j, n, 0.5) >= confidence:
        j += 1
    coverage = 1 - 2 * binom.cdf(j - 1, n, 0.5) if n > 1 else 0.0
    return xs[j - 1], xs[n - j], float(coverage)


def ratio_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``median_ci`` of the per-repeat ratios a_i / b_i (the interval around ``median_ratio(a, b)``)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need two equally long, non-empty series (got {len(a)} and {len(b)})")
    return median_ci([x / y for x, y in zip(a, b)], confidence)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how much the repeats of one variant disagree."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else float("nan")


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summary(times: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per variant: median, min, max and spread of the repeats (seconds)."""
    return {
        name: {"median_s": median(t), "min_s": min(t), "max_s": max(t), "spread": spread(t), "repeats": len(t)}
        for name, t in times.items()
    }


def compare_means(a: Sequence[float], b: Sequence[float], margin: float, alpha: float = 0.05) -> dict[str, Any]:
    """Welch's t-test and the TOST equivalence test of mean(a) against mean(b), as a dict: the implementation is
    ``kasa_lightning.experiments.stats.compare_means`` (the report uses the same one)."""
    from kasa_lightning.experiments.stats import compare_means as compare

    return compare(a, b, margin, alpha).as_dict()
