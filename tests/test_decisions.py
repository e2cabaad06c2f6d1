"""ablations.decisions against the libraries' own tests and textbook formulas, on small
synthetic studies (the error rates over hundreds of them: test_decisions_sim.py)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import scipy.stats
from scipy import stats as sps

from ablations import effects
from ablations.config import Study
from ablations.decisions import (Estimate, additive_model, counts, decide, decide_study,
                                 p_values, paired, seeds_to_decide)


def study(**fields) -> Study:
    base = {"question": "q", "data": "d", "baseline": "a", "target_val_accuracy": 0.5,
            "defaults": {}, "variants": {"a": {}, "b": {}}}
    return Study(**{**base, **fields})


def grid(rows: int = 4, columns: int = 3) -> Study:
    return study(baseline="r0-c0", variants={},
                 factors={"row": {f"r{i}": {} for i in range(rows)},
                          "col": {f"c{j}": {} for j in range(columns)}})


def test_paired_p_values_are_scipys_t_test_and_statsmodels_tost():
    """p of the difference: scipy's paired t-test; p of equivalence: 2 × statsmodels' TOST
    (so p ≤ α ⇔ the 1 − α interval lies inside ± margin)."""
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.normal(80, 2, 6), rng.normal(80.5, 2, 6)
        e = paired("a − b", "pair", dict(enumerate(a - b)), ["a", "b"], 1.5)
        p_diff, p_equiv = p_values(e)
        assert p_diff == pytest.approx(sps.ttest_rel(a, b).pvalue)
        assert p_equiv == pytest.approx(min(1.0, 2 * ttost_paired(a, b, -1.5, 1.5)[0]))


def test_additive_model_is_the_anova_without_replication_with_tukeys_test():
    """One seed per cell: each main effect is the average of its simple differences (what
    effects.factorial_effects computes), its error the interaction mean square; Tukey's F as
    in the textbook (SS_N = (Σ y_ij a_i b_j)² / (Σ a_i² Σ b_j²), a_i, b_j the row and column
    effects; F = SS_N / ((SS_res − SS_N) / (df_res − 1)))."""
    spec = grid()
    rng = np.random.default_rng(1)
    y = rng.normal(80, 1, (4, 3)) + np.outer([0, 2, -1, 3], [0, 1, 1.5]) * 0.3
    values = {f"r{i}-c{j}": {"seed0": y[i, j] / 100} for i in range(4) for j in range(3)}
    estimates = additive_model(values, spec.levels(), {"row": "r0", "col": "c0"}, 1.0)
    mains = effects.factorial_effects(values, spec.levels(), {"row": "r0", "col": "c0"})["main"]
    assert [e.answer for e in estimates] == [effects.effect_label(m) for m in mains]
    for e, m in zip(estimates, mains):
        assert e.difference == pytest.approx(m["difference"])
    import pandas as pd
    import statsmodels.formula.api as smf

    frame = pd.DataFrame([(f"r{i}", f"c{j}", y[i, j]) for i in range(4) for j in range(3)],
                         columns=["row", "col", "acc"])
    formula = smf.ols("acc ~ C(row) + C(col)", frame).fit()  # the formula API builds the same
    assert [e.difference for e in estimates] == pytest.approx(list(formula.params[1:]))
    assert [e.se for e in estimates] == pytest.approx(list(formula.bse[1:]))
    residual = y - y.mean(1, keepdims=True) - y.mean(0) + y.mean()
    ms_res = (residual ** 2).sum() / 6  # df (4 − 1)(3 − 1)
    assert estimates[0].df == 6
    assert estimates[0].se == pytest.approx(math.sqrt(ms_res * 2 / 3))  # rows: 3 cells each
    assert estimates[-1].se == pytest.approx(math.sqrt(ms_res * 2 / 4))  # columns: 4 cells each
    a, b = y.mean(1) - y.mean(), y.mean(0) - y.mean()
    ss_n = (y * np.outer(a, b)).sum() ** 2 / ((a ** 2).sum() * (b ** 2).sum())
    f = ss_n / ((ms_res * 6 - ss_n) / 5)
    tukey = estimates[0].additivity
    assert tukey["f"] == pytest.approx(f) and tukey["df"] == [1, 5]
    assert tukey["p_value"] == pytest.approx(sps.f.sf(f, 1, 5))


def test_one_seed_factorial_decides_with_the_seeds_it_has():
    """init_reg's shape: 9 × 3 cells, 1 seed; zeros is 30 points down, the rest alike."""
    inits = ["glorot_uniform", "zeros", *[f"i{k}" for k in range(7)]]
    spec = study(baseline="glorot_uniform", variants={},
                 factors={"init": {name: {} for name in inits},
                          "reg": {"none": {}, "l1": {}, "l2": {}}})
    rng = np.random.default_rng(2)
    values = {name: {"seed0": (85 - 30 * (cell["init"] == "zeros") + rng.normal(0, 0.5)) / 100}
              for name, cell in spec.levels().items()}
    decided = {d["answer"]: d for d in decide_study(spec, values)}
    assert len(decided) == 10
    zeros = decided["init zeros − glorot_uniform"]
    assert zeros["decision"] == "worse" and zeros["interval"][1] < -25
    assert zeros["seeds"] == 1 and set(zeros["variants"]) == {
        "zeros", "glorot_uniform", "zeros-l1", "glorot_uniform-l1", "zeros-l2", "glorot_uniform-l2"}
    assert "assumes the factors' effects add up" in zeros["method"]
    assert "Tukey's 1-df test of non-additivity" in zeros["method"] and "Holm over 10" in zeros["method"]
    assert zeros["additivity"]["df"] == [1, 15]
    assert counts(list(decided.values()))["decided"] >= 1


def test_replicated_factorial_main_effect_is_the_blocked_anova_contrast():
    """Every cell with ≥ 2 seeds: the main effect and its error are the two-way ANOVA's with
    seeds as blocks — checked against statsmodels' formula API (sum-coded: r1 − r0 is −2 × the
    r0 coefficient), residual df = 12 runs − 4 cells − 2 seed blocks = 6."""
    import pandas as pd
    import statsmodels.formula.api as smf

    spec = grid(2, 2)
    rng = np.random.default_rng(5)
    values = {name: {f"seed{s}": 0.8 + 0.01 * s + 0.02 * (cell["row"] == "r1")
                     + rng.normal(0, 0.004) for s in range(3)}
              for name, cell in spec.levels().items()}
    rows = [{"acc": 100 * v, "row": cell["row"], "col": cell["col"], "seed": seed}
            for name, cell in spec.levels().items() for seed, v in values[name].items()]
    fit = smf.ols("acc ~ C(row, Sum) * C(col, Sum) + C(seed, Sum)", pd.DataFrame(rows)).fit()
    decided = {d["answer"]: d for d in decide_study(spec, values)}
    row = decided["row r1 − r0"]
    assert row["difference"] == pytest.approx(-2 * fit.params["C(row, Sum)[S.r0]"])
    half = (row["interval"][1] - row["interval"][0]) / 2
    t = scipy.stats.t.ppf(0.5 + row["level"] / 2, fit.df_resid)
    assert half == pytest.approx(t * 2 * fit.bse["C(row, Sum)[S.r0]"])
    assert "residual df 6" in row["method"] and fit.df_resid == 6
    assert [d["decision"] for d in decided.values()] == ["better", "equivalent"]


def test_uneven_seeds_use_the_seeds_in_common():
    spec = study(variants={"a": {}, "b": {}})
    values = {"a": {"seed0": 0.80, "seed1": 0.81, "seed2": 0.79, "seed3": 0.8},
              "b": {"seed0": 0.85, "seed1": 0.86, "seed2": None}}
    (d,) = decide_study(spec, values)
    assert (d["answer"], d["seeds"]) == ("b − a", 2)
    assert d["difference"] == pytest.approx(5.0)


def random_estimates(rng: random.Random) -> list[Estimate]:
    out = []
    for k in range(rng.randint(1, 8)):
        n = rng.randint(2, 10)
        out.append(Estimate(f"e{k}", "pair", ["x", "y"], rng.uniform(-4, 4), rng.uniform(0.05, 2),
                            n - 1, n, "t", 0.0, rng.choice([0.5, 1.0, 2.0])))
    return out


def test_decision_and_interval_and_holm_never_disagree():
    """A decision reads from its interval (excludes 0 / inside ± margin), the interval is at
    Holm's level for the answer (≥ the family's confidence), and an answer is decided exactly
    when its Holm-adjusted p is at most α."""
    rng = random.Random(3)
    for _ in range(100):
        confidence = rng.choice([0.9, 0.95, 0.99])
        for d in decide(random_estimates(rng), confidence):
            lo, hi = d["interval"]
            assert lo < d["difference"] < hi and d["level"] >= confidence - 1e-12
            side = "better" if lo > 0 else "worse" if hi < 0 else None
            inside = -d["margin"] < lo and hi < d["margin"]
            assert d["decision"] == side or (side is None and d["decision"] ==
                                             ("equivalent" if inside else "undecided"))
            assert (d["decision"] != "undecided") == (d["p_value"] <= 1 - confidence + 1e-12)


def test_holm_levels_step_down():
    """Three answers: the smallest p at α/3, the next at α/2 once the first is decided, the
    last at α/1 once the second is."""
    strong = Estimate("s", "pair", [], 10.0, 1.0, 9, 10, "t", 0.0, 1.0)
    middle = Estimate("m", "pair", [], 3.0, 1.0, 9, 10, "t", 0.0, 1.0)
    weak = Estimate("w", "pair", [], 1.0, 1.0, 9, 10, "t", 0.0, 1.0)
    levels = {d["answer"]: d["level"] for d in decide([weak, strong, middle], 0.95)}
    assert levels == pytest.approx({"s": 1 - 0.05 / 3, "m": 1 - 0.05 / 2, "w": 1 - 0.05})
    assert p_values(middle)[0] < 0.025 and p_values(weak)[0] > 0.05  # m decided, w not
    stop = Estimate("m", "pair", [], 0.5, 1.0, 9, 10, "t", 0.0, 1.0)  # not decided at α/2
    levels = {d["answer"]: d["level"] for d in decide([weak, strong, stop], 0.95)}
    assert levels == pytest.approx({"s": 1 - 0.05 / 3, "m": 1 - 0.05 / 2, "w": 1 - 0.05 / 2})


def test_speedup_ratio_is_decided_against_1():
    spec = study()
    values = {"a": {"seed0": 0.8, "seed1": 0.8}, "b": {"seed0": 0.8, "seed1": 0.8}}
    ratios = {"b vs a: training steps": {"variants": ["b", "a"],
                                         "values": {"seed0": 1.9, "seed1": 2.1, "seed2": 2.0}}}
    decided = decide_study(spec, values, ratios=ratios)
    speedup = decided[-1]
    assert (speedup["kind"], speedup["decision"], speedup["margin"]) == ("speedup", "better", None)
    assert speedup["interval"][0] > 1


def test_seeds_to_decide_is_statsmodels_power_and_decides():
    """The suggested seeds: TTestPower's solve_power, rounded up; and a study with that many
    seeds, the same mean and spread, is decided."""
    from statsmodels.stats.power import TTestPower

    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(10):
        per_seed = rng.normal(1.5, 2.0, 3)
        e = paired("b − a", "pair", dict(enumerate(per_seed)), ["b", "a"], 0.1)
        (d,) = decide([e], 0.95)
        if d["decision"] != "undecided" or abs(e.difference) < 0.1:
            continue
        n, shows = seeds_to_decide(e, d["level"])
        assert d["seeds_to_decide"] == n
        if n is None:  # beyond 1000 seeds
            assert d["would_decide"] == "over 1000 seeds at the observed spread"
            continue
        assert shows == "difference"
        checked += 1
        sd = e.se * math.sqrt(3)
        exact = TTestPower().solve_power(effect_size=abs(e.difference) / sd, alpha=0.05, power=0.8)
        assert n == max(math.ceil(exact), 4)
        assert d["would_decide"] == f"about {n} seeds to show a {abs(e.difference):.1f}-point difference"
        z = sps.norm.ppf((np.arange(n) + 0.5) / n)  # n seeds with exactly that mean and spread
        more = e.difference + sd * (z - z.mean()) / z.std(ddof=1)
        (again,) = decide([paired("b − a", "pair", dict(enumerate(more)), ["b", "a"], 0.1)], 0.95)
        assert again["decision"] == ("better" if e.difference > 0 else "worse")
    assert checked >= 3


def test_one_seed_says_what_would_decide():
    (d,) = decide_study(study(), {"a": {"seed0": 0.8}, "b": {"seed0": 0.9}})
    assert (d["decision"], d["interval"], d["seeds_to_decide"]) == ("undecided", None, None)
    assert d["would_decide"] == "at least 2 seeds in common: one measures no spread"


def test_confidence_is_a_parameter():
    spec = study()
    values = {"a": {f"seed{s}": 0.8 + 0.01 * s for s in range(4)},
              "b": {f"seed{s}": 0.81 + 0.012 * s for s in range(4)}}
    wide, narrow = (decide_study(spec, values, c)[0]["interval"] for c in (0.99, 0.8))
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    with pytest.raises(ValueError, match="confidence"):
        decide_study(spec, values, 1.0)


def test_transfer_source_on_other_data_is_not_an_answer():
    spec = study(variants={"a": {}, "b": {}, "source": {"data": "other"}})
    values = {name: {"seed0": 0.8, "seed1": 0.82} for name in ("a", "b", "source")}
    assert [d["answer"] for d in decide_study(spec, values)] == ["b − a"]
