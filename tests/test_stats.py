"""ablations.stats against hand-computed values and scipy's own intervals."""

import math

import pytest
from scipy import stats as scipy_stats

from ablations.stats import difference_ci, judge, mean_ci, summary, verdict


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([0.90, 0.92, 0.94])
    # sd 0.02, se 0.02/sqrt(3), t(0.975, df=2) = 4.302653
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-6)
    low, high = scipy_stats.t.interval(0.95, 2, loc=0.92, scale=scipy_stats.sem([0.90, 0.92, 0.94]))
    assert (mean - half, mean + half) == pytest.approx((low, high))


def test_mean_ci_other_confidence():
    _, half = mean_ci([1.0, 2.0, 3.0, 4.0], confidence=0.9)
    assert half == pytest.approx(scipy_stats.t.ppf(0.95, 3) * scipy_stats.sem([1, 2, 3, 4]))


def test_mean_ci_leaves_out_nan_and_none_but_counts_them():
    assert mean_ci([0.90, float("nan"), 0.94, None]) == mean_ci([0.90, 0.94])
    result = summary([0.90, float("nan"), 0.94], ["seed0", "seed1", "seed2"])
    assert result["n"] == 2 and result["excluded"] == 1
    assert result["values"] == {"seed0": 0.90, "seed1": None, "seed2": 0.94}


def test_mean_ci_one_value_and_no_value():
    assert mean_ci([0.9]) == (0.9, None)
    assert mean_ci([0.9, float("nan")]) == (0.9, None)
    assert mean_ci([float("nan"), None]) == (None, None)
    assert mean_ci([]) == (None, None)


def test_difference_ci_is_welch():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0]
    diff, half = difference_ci(a, b)
    # by hand: va/na = 1.6667/4, vb/nb = 4/3, Satterthwaite df = 3.2347
    va, vb = (5 / 3) / 4, 4 / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    assert df == pytest.approx(3.2347, abs=1e-4)
    assert diff == pytest.approx(-1.5)
    assert half == pytest.approx(scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb))
    low, high = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (diff - half, diff + half) == pytest.approx((low, high))


def test_difference_ci_edge_cases():
    assert difference_ci([0.9], [0.8, 0.7]) == (pytest.approx(0.15), None)
    assert difference_ci([0.9, 0.9], [0.8, 0.8]) == (pytest.approx(0.1), 0.0)
    assert difference_ci([float("nan")] * 3, [0.8, 0.7]) == (None, None)


def test_judge():
    assert judge(0.03, 0.01) == "better"
    assert judge(-0.03, 0.01) == "worse"
    assert judge(0.005, 0.01) == "not distinguishable"
    assert judge(-0.03, 0.01, higher_is_better=False) == "better"
    assert judge(0.03, None) is None


def test_verdict_wording():
    better = verdict("relu-bn", "relu", [0.93, 0.94, 0.95], [0.90, 0.91, 0.92])
    _, half = difference_ci([0.93, 0.94, 0.95], [0.90, 0.91, 0.92])
    assert better == f"relu-bn vs relu: +3.0 ± {half * 100:.1f} points of test accuracy — better"
    same = verdict("a", "b", [0.90, 0.92, 0.91], [0.91, 0.90, 0.92])
    assert same.endswith("— not distinguishable")
    assert verdict("a", "b", [0.80, 0.81, 0.82], [0.90, 0.91, 0.92]).startswith("a vs b: -10.0 ±")
    assert verdict("a", "b", [0.80, 0.81, 0.82], [0.90, 0.91, 0.92]).endswith("— worse")


def test_verdict_one_seed_and_diverged_runs():
    assert verdict("a", "b", [0.93], [0.90]) == (
        "a vs b: +3.0 points of test accuracy — one seed: no interval")
    text = verdict("ones", "b", [float("nan"), 0.5, 0.7], [0.90, 0.91, 0.92])
    assert text.startswith("ones vs b: -31.0 ±")
    assert text.endswith("(1 of 3 runs of ones diverged)")
    assert verdict("ones", "b", [None, None], [0.9, 0.9]) == (
        "ones vs b: no finite result to compare (2 of 2 runs of ones diverged)")
