"""``kasa_lightning.experiments.stats``: Welch's t-test and the TOST test against values computed by hand."""

from __future__ import annotations

import math

import pytest

from kasa_lightning.experiments.stats import compare_means, summarize, tost, welch


def _by_hand(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Welch's t, the Welch-Satterthwaite df and the standard error, from the definitions."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return (ma - mb) / se, df, se


def test_welch_matches_the_definition():
    """a = 1..4, b = 2..6: d = -1.5, se^2 = (5/3)/4 + (5/2)/5 = 11/12, df = (11/12)^2 / ((5/12)^2/3 + (1/2)^2/4)."""
    from scipy.stats import t as student_t

    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0, 6.0]
    t, df, se = _by_hand(a, b)
    assert se**2 == pytest.approx(11 / 12)
    assert df == pytest.approx((11 / 12) ** 2 / ((5 / 12) ** 2 / 3 + 0.5**2 / 4))
    stat, p, ci = welch(a, b)
    assert stat == pytest.approx(t) == pytest.approx(-1.5 / math.sqrt(11 / 12))
    assert p == pytest.approx(2 * student_t.sf(abs(t), df))
    half = student_t.ppf(0.95, df) * se  # the 90% interval (alpha 0.05 per side)
    assert ci == pytest.approx((-1.5 - half, -1.5 + half))


def test_tost_is_two_shifted_one_sided_tests():
    """H0 d <= -m: t1 = (d + m) / se, p1 = P(T > t1); H0 d >= m: t2 = (d - m) / se, p2 = P(T < t2)."""
    from scipy.stats import t as student_t

    a, b = [0.80, 0.82, 0.79, 0.81, 0.83], [0.81, 0.80, 0.82, 0.78, 0.80]
    _, df, se = _by_hand(a, b)
    d = sum(a) / 5 - sum(b) / 5
    for margin in (0.005, 0.02, 0.05):
        p1, p2, p = tost(a, b, margin)
        assert p1 == pytest.approx(student_t.sf((d + margin) / se, df))
        assert p2 == pytest.approx(student_t.cdf((d - margin) / se, df))
        assert p == max(p1, p2)
        c = compare_means(a, b, margin)
        # equivalence at alpha exactly when the (1 - 2 alpha) interval lies inside the margin
        assert c.equivalent == (-margin < c.ci[0] and c.ci[1] < margin)
    assert compare_means(a, b, 0.05).equivalent and not compare_means(a, b, 0.005).equivalent
    with pytest.raises(ValueError, match="margin"):
        tost(a, b, 0.0)


def test_compare_means_guards_and_summary():
    far = compare_means([10.0, 10.5, 11.0], [1.0, 1.5, 2.0], margin=1.0)
    assert far.distinguishable and not far.equivalent and far.p_difference < 1e-3
    one = compare_means([1.0], [1.0, 2.0], margin=1.0)
    assert one.p_difference is None and "2 seeds" in one.reason
    flat = compare_means([1.0, 1.0], [1.0, 1.0], margin=1.0)
    assert flat.p_difference is None and "spread" in flat.reason
    assert summarize([3.0, 1.0, 2.0, 10.0]) == {
        "median": 2.5,
        "mean": 4.0,
        "std": pytest.approx(math.sqrt(50 / 3)),
        "n": 4,
    }
    assert summarize([]) == {"median": None, "mean": None, "std": None, "n": 0}
    assert summarize([0.5])["std"] is None
