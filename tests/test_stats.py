"""ablations.stats against hand-computed values and scipy's own intervals."""

import math

import pytest
from scipy import stats as scipy_stats

from ablations.stats import judge, mean_ci, summary


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


def test_judge():
    assert judge(0.03, 0.01) == "better"
    assert judge(-0.03, 0.01) == "worse"
    assert judge(0.005, 0.01) == "not distinguishable"
    assert judge(-0.03, 0.01, higher_is_better=False) == "better"
    assert judge(0.03, None) is None
