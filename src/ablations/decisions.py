"""Decisions: every question-level answer of a study ends `better`, `worse`, `equivalent` or
`undecided` — and an undecided one says about how many seeds would decide it.

    python -c "from ablations.config import load_params; from ablations import decisions
    s = load_params().studies['depth']; print(decisions.decide_study(s, {'shallow': {'seed0':
    .80, 'seed1': .81, 'seed2': .79}, 'deeper': {'seed0': .84, 'seed1': .86, 'seed2': .85}}))"

Public API (kept stable: the sequential procedure calls it after every round)
---------------------------------------------------------------------------
decide_study(study, values, confidence=0.95, ratios=None) -> list[dict]
    study       a config.Study: its factors, baseline, also_compare, margin, variants' data.
    values      {variant: {"seed0": test accuracy 0..1 or None, …}} (effects.Values); a
                variant or seed may be missing (seeds spent unevenly), None/NaN = diverged.
    confidence  the family's confidence: Holm keeps the chance of any wrong decision among the
                study's answers at most 1 − confidence. A sequential procedure passes its
                per-look level here.
    ratios      the BN pairs of the speed-up answer, {pair: {"variants": [bn, twin], "values":
                {"seed0": twin ÷ bn or None}}} (evaluate.speedup_ratios builds them); None or
                empty: no speed-up answer.
    ratio_label the speed-up answer's label (evaluate.speedup_label names its target).
  returns one dict per answer, in question order (main effects, pairs, the speed-up):
    answer          its label: "norm bn − none" (main effect: level − reference), "before −
                    after" (pair, a − b), "BN speed-up: training steps to 0.75 validation
                    accuracy, without ÷ with BN" (speed-up: ratio_label)
    kind            "main" | "pair" | "speedup"
    decision        "better" | "worse" | "equivalent" | "undecided" (DECISIONS)
    difference      points of test accuracy; a speed-up: the geometric mean of the per-seed
                    ratios (None: no finite value)
    interval        [lo, hi] at `level` (a speed-up: on the ratio scale); None without a
                    spread (one seed, no residual df)
    level           the interval's confidence: Holm's level for this answer (≥ confidence)
    margin          the study's margin, points; None for a ratio (decided by 1 alone)
    inside_margin   better/worse and the whole interval inside ± margin: real but small
    seeds           seeds the estimate rests on (per cell, for the factorial model)
    method          how the interval was made and the multiplicity control, in words
    variants        the variants the answer rests on (the ones more seeds would help)
    p_value         Holm-adjusted p of the decision; None without an interval
    seeds_to_decide undecided: about how many seeds would decide it at the observed spread
                    (None: decided, or no spread to extrapolate); `would_decide` in words
    additivity      factorial model only: Tukey's one-df test of non-additivity {f, df, p_value}
counts(decisions) -> {"decided": k, "answers": n}, the headline count.

The rules (confidence 1 − α)
----------------------------
better / worse: the interval excludes 0 (a ratio: excludes 1); the side says which. A ratio
    is without BN ÷ with BN, so above 1 — BN needs fewer steps — is `better`.
equivalent: the interval lies inside ± margin. It is the same two-sided interval that
    decides better/worse, so this is the two-one-sided-tests (TOST) equivalence test at α/2
    per side (statsmodels' ttost_paired p ≤ α/2), stricter than TOST at α (the (1 − 2α)
    interval). Chosen so that one printed interval carries every decision: a reader checks
    each word against it.
undecided: neither. Both at once (a real difference smaller than the margin) is better /
    worse with inside_margin true.
Multiplicity: Holm's step-down (statsmodels multipletests, "holm") over the answers that have
    an interval, each with p = the smaller of the difference test's p and the equivalence
    test's p in its two-sided-interval form (2 × TOST's). Each answer's interval is at the
    level Holm tested it at: the k-th smallest p at 1 − α/(m − k + 1), answers after Holm's
    first non-rejection at that answer's level. So `decided` and "the interval excludes 0 /
    lies inside the margin" never disagree, and every interval covers at ≥ 1 − α.

Where the interval comes from
-----------------------------
paired by seed (effects.contrast): the contrast seed by seed, Student-t over the seeds
    (df = seeds − 1). Named pairs: a pair's two variants may spread differently from the
    rest of the study, so their own per-seed differences measure their error.
replicated factorial (replicated_model): a factorial study whose cells have ≥ 2 seeds in
    common: the cell-means model value ~ C(cell) + C(seed) (seeds as blocks; OLS,
    statsmodels), each main effect the average over the other factors' levels of level −
    reference, its error from the residual of every cell (df = runs − cells − seeds + 1: 14
    for 8 cells × 3 seeds, against 2 for one contrast's seeds). No additivity assumed: the
    interactions are in the cell means, not in the error.
speed-up (ratio_estimate): one answer per study over every BN pair — the geometric mean of
    the per-seed ratios: each seed's mean log ratio over its pairs, t over the seeds (a
    mean, not a contrast, so a seed's shared luck stays in its error), decided against a log
    ratio of 0 and reported as a ratio.
factorial model: a factorial study whose cells have fewer than 2 seeds in common (init_reg:
    27 cells × 1 seed) estimates its main effects with the additive model
    acc ~ C(factor 1) + C(factor 2) + … (+ C(seed) when there are several), fitted by OLS
    (statsmodels): with one seed, the two-way ANOVA without replication, whose residual — the
    interactions — estimates the error. It assumes the factors' effects add up. Tukey's
    one-degree-of-freedom test of non-additivity (the squared fitted values added to the
    model) is reported with it; interactions inflate the residual, so where the effects do
    not add up the intervals of the main effects (averaged over the other factors' levels)
    are wider than needed, not falsely narrow.

Seeds to decide: statsmodels' TTestPower.solve_power at POWER, the per-seed spread
se × √seeds, the answer's Holm level: to show the observed difference (two-sided), or
equivalence (margin − |difference|, one-sided at half the level); the fewer of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import stdtr, stdtrit  # Student t's CDF and inverse (what scipy.stats.t calls)

from ablations import effects, heap
from ablations.config import MAX_SEEDS, Study

DECISIONS = ("better", "worse", "equivalent", "undecided")
POWER = 0.8  # chance that the suggested number of seeds decides, if the observed values hold
HOLM = "Holm"
SPEEDUP = "BN speed-up, without ÷ with BN"  # the speed-up answer's label unless one is given


@dataclass
class Estimate:
    """One answer's difference and its standard error, before the decision."""

    answer: str
    kind: str  # main | pair | speedup
    variants: list[str]
    difference: float | None
    se: float | None  # None: no spread measured
    df: float | None  # degrees of freedom of the t-distribution
    seeds: int
    method: str
    null: float = 0.0  # "no effect": 0 points, or a ratio of 1
    margin: float | None = None
    additivity: dict[str, Any] | None = None
    log: bool = False  # difference and se on the log scale: the answer is a ratio

    @property
    def testable(self) -> bool:
        return (self.difference is not None and self.se is not None and self.se > 0
                and self.df is not None and self.df >= 1)


# --------------------------------------------------------------------------- the questions


def reference_levels(study: Study) -> dict[str, str]:
    """Each factor's reference level: the baseline's cell, else each factor's first level."""
    levels = study.levels()
    return levels.get(study.baseline) or {f: next(iter(lv)) for f, lv in study.factors.items()}


def question_pairs(study: Study) -> list[tuple[str, str]]:
    """The (a, b) pairs the question names: `also_compare`, and in a study without factors each
    variant tested on the study's data against the baseline."""
    pairs = list(study.also_compare)
    if study.factors:
        return pairs
    own = [name for name in study.variants
           if name != study.baseline and study.data_of(name) == study.data]
    return [(name, study.baseline) for name in own] + pairs


# --------------------------------------------------------------------------- estimates


def paired(answer: str, kind: str, per_seed: dict[str, float], variants: list[str],
           margin: float | None, null: float = 0.0, method: str = "paired by seed") -> Estimate:
    """Mean of the per-seed values and its standard error (df = seeds − 1)."""
    kept = np.array([v for v in per_seed.values() if v is not None and np.isfinite(v)], float)
    n = int(kept.size)
    mean = float(kept.mean()) if n else None
    se = float(kept.std(ddof=1) / math.sqrt(n)) if n >= 2 else None
    return Estimate(answer, kind, variants, mean, se, n - 1 if n >= 2 else None, n,
                    f"{method}, t over {n} seed{'s' if n != 1 else ''}", null, margin)


def _main_label(factor: str, level: str, reference: str) -> str:
    return effects.effect_label({"factor": factor, "level": level, "reference": reference})


def factorial_estimates(study: Study, values: effects.Values) -> list[Estimate]:
    """Main effect of every factor level against the reference: from the replicated
    factorial's model where every cell has ≥ 2 seeds in common, else from the additive model."""
    levels, reference = study.levels(), reference_levels(study)
    cells = {name: values.get(name, {}) for name in levels}
    mains = effects.factorial_effects(cells, levels, reference)["main"]
    if all(m["n"] >= 2 for m in mains):
        return replicated_model(cells, mains, study.margin)
    return additive_model(cells, levels, reference, study.margin)


def blocked_fit(values: effects.Values):
    """(OLS fit, its cells, seeds) of accuracy in points ~ C(cell) + C(seed) (statsmodels): one
    mean per cell, and the seeds as blocks (sum-to-zero coded, so a cell's coefficient is its
    mean over the seeds' effects) — a seed shifts every cell it trained alike (its data order,
    its initial weights). The residual pools every cell's spread; None without a residual
    degree of freedom."""
    from statsmodels.regression.linear_model import OLS  # statsmodels.api would import every model

    rows = [(cell, seed, effects.POINTS * v) for cell, by_seed in values.items()
            for seed, v in by_seed.items() if v is not None and np.isfinite(v)]
    cells = list(dict.fromkeys(cell for cell, _, _ in rows))
    seeds = sorted({seed for _, seed, _ in rows})
    x = np.array([[float(cell == c) for c in cells]
                  + [float(seed == s) - float(seed == seeds[0]) for s in seeds[1:]]
                  for cell, seed, _ in rows]).reshape(len(rows), len(cells) + len(seeds) - 1)
    if len(rows) <= x.shape[1]:
        return None, cells, len(seeds)
    return OLS(np.array([v for _, _, v in rows]), x).fit(), cells, len(seeds)


def fitted_contrast(fit, cells: list[str], weights: dict[str, float]
                    ) -> tuple[float, float] | None:
    """(Σ weight × cell coefficient, its standard error) from the fit's covariance; None when
    a weighted cell has no finite value."""
    if fit is None or any(name not in cells for name, w in weights.items() if w):
        return None
    vector = np.zeros(len(fit.params))
    for name, w in weights.items():
        if w:
            vector[cells.index(name)] = w
    se = float(np.sqrt(vector @ fit.cov_params() @ vector))
    return float(vector @ fit.params), se


def replicated_model(values: effects.Values, mains: list[dict[str, Any]],
                     margin: float) -> list[Estimate]:
    """Main effects of a replicated factorial (every cell has ≥ 2 seeds in common) from the
    cell-means model with seeds as blocks (blocked_fit): each is the average over the other
    factors' levels of level − reference, the same contrast as effects.factorial_effects, with
    its error from the residual of every cell (df = runs − cells − seeds + 1) instead of the
    seed-to-seed spread of one contrast (df = seeds − 1). Its weights are ±1/(cells/2) on every
    cell, so the pooled variance is the contrast's own even when the cells' spreads differ."""
    fit, cells, seeds = blocked_fit(values)
    df = float(fit.df_resid) if fit is not None else 0.0
    method = (f"factorial model of the {len(values)} cells with {seeds} seeds as blocks (OLS, "
              f"residual df {df:g}): each main effect averaged over the other factors' levels")
    out = []
    for m in mains:
        found = fitted_contrast(fit, cells, m["weights"]) if df >= 1 else None
        out.append(Estimate(_main_label(m["factor"], m["level"], m["reference"]), "main",
                            m["variants"], found[0] if found else None,
                            found[1] if found else None, df if found else None, m["n"],
                            method, 0.0, margin))
    return out


def _design(values: effects.Values, levels: dict[str, dict[str, str]],
            reference: dict[str, str]) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(accuracy in points, treatment-coded design matrix, its column names, seeds): one row
    per finite (cell, seed); an intercept, a 0/1 column per factor level other than the
    reference, and per seed other than the first when there are several (seeds as blocks).
    What the formula `acc ~ C(f1) + C(f2) (+ C(seed))` builds, without its parser (0.3 s a
    fit: the sequential procedure and the simulation fit thousands)."""
    rows = [(cell, seed, effects.POINTS * acc) for name, cell in levels.items()
            for seed, acc in values[name].items() if acc is not None and np.isfinite(acc)]
    seeds = sorted({seed for _, seed, _ in rows})
    levels_of = {f: [lv for lv in dict.fromkeys(c[f] for c in levels.values()) if lv != ref]
                 for f, ref in reference.items()}
    x = np.array([[1.0] + [float(cell[f] == lv) for f in reference for lv in levels_of[f]]
                  + [float(seed == s) for s in seeds[1:]] for cell, seed, _ in rows])
    names = (["Intercept"] + [f"{f}={lv}" for f in reference for lv in levels_of[f]]
             + [f"seed {s}" for s in seeds[1:]])
    return (np.array([acc for _, _, acc in rows]), x.reshape(len(rows), len(names)), names,
            len(seeds))


def additive_model(values: effects.Values, levels: dict[str, dict[str, str]],
                   reference: dict[str, str], margin: float) -> list[Estimate]:
    """Main effects from the OLS fit (statsmodels) of the additive model acc ~ factor 1 +
    factor 2 + … (+ seed): with one seed per cell, the ANOVA without replication (error = the
    interactions), reported with Tukey's 1-df test of non-additivity."""
    from statsmodels.regression.linear_model import OLS  # statsmodels.api would import every model

    y, x, names, seeds = _design(values, levels, reference)
    fit = OLS(y, x).fit() if len(y) > x.shape[1] else None
    df = float(fit.df_resid) if fit is not None else 0.0
    additivity = tukey_additivity(y, x, fit) if df >= 2 else None
    design = ("ANOVA without replication" if seeds == 1
              else f"{seeds} seeds as blocks, cells with fewer than 2 seeds in common")
    method = (f"additive model of the {len(levels)} cells ({design}; OLS, residual df {df:g}): "
              "assumes the factors' effects add up")
    if additivity is not None:
        method += (f" (Tukey's 1-df test of non-additivity: F = {additivity['f']:.2f}, "
                   f"p = {additivity['p_value']:.2g})")
    out = []
    for factor, ref in reference.items():
        for level in dict.fromkeys(c[factor] for c in levels.values()):
            if level == ref:
                continue
            k = names.index(f"{factor}={level}")
            ok = fit is not None and df >= 1 and bool(np.isfinite(fit.bse[k]))
            cells = [n for n, c in levels.items() if c[factor] in (level, ref)]
            out.append(Estimate(
                _main_label(factor, level, ref), "main", cells,
                float(fit.params[k]) if ok else None, float(fit.bse[k]) if ok else None,
                df if ok else None, seeds, method, 0.0, margin, additivity))
    return out


def tukey_additivity(y: np.ndarray, x: np.ndarray, additive) -> dict[str, Any] | None:
    """Tukey's one-degree-of-freedom test of non-additivity: the additive fit's squared fitted
    values added as a regressor; its t-test (F = t², 1 df) asks whether the cells curve away
    from the sum of the main effects."""
    from statsmodels.regression.linear_model import OLS  # statsmodels.api would import every model

    fitted = additive.fittedvalues
    fit = OLS(y, np.column_stack([x, (fitted - fitted.mean()) ** 2])).fit()
    p = float(fit.pvalues[-1])
    if fit.df_resid < 1 or not np.isfinite(p):
        return None
    return {"test": "Tukey one-degree-of-freedom non-additivity",
            "f": float(fit.tvalues[-1] ** 2), "df": [1, float(fit.df_resid)], "p_value": p}


def pair_estimates(study: Study, values: effects.Values) -> list[Estimate]:
    out = []
    for a, b in question_pairs(study):
        c = effects.contrast({a: values.get(a, {}), b: values.get(b, {})}, {a: 1.0, b: -1.0})
        out.append(paired(f"{a} − {b}", "pair", c["per_seed"], [a, b], study.margin))
    return out


def ratio_estimate(ratios: dict[str, dict[str, Any]], label: str) -> Estimate:
    """One speed-up answer for every BN pair: the geometric mean of the per-seed ratios over
    the pairs (the settings of the other factors), as a t over the seeds of each seed's mean
    log ratio (df = seeds − 1). Averaging within the seed first keeps what a seed shares
    across its pairs in the error (a model with seeds as blocks would drop it: its interval
    covers the mean of these seeds, not the speed-up). Decided on the log scale against 0 (a
    ratio of 1); the record reports the ratio and its interval back on the ratio scale."""
    logs = {pair: {seed: math.log(v) for seed, v in r["values"].items()
                   if v is not None and np.isfinite(v) and v > 0} for pair, r in ratios.items()}
    seeds = sorted(set().union(*logs.values()))
    per_seed = {seed: float(np.mean([pair[seed] for pair in logs.values() if seed in pair]))
                for seed in seeds}
    reached = [pair for pair, by_seed in logs.items() if by_seed]
    never = [pair for pair in ratios if pair not in reached]
    n = len(reached)
    variants = list(dict.fromkeys(v for r in ratios.values() for v in r["variants"]))
    method = (f"geometric mean of the per-seed ratios over {n} BN pair{'s' if n != 1 else ''}"
              f" ({', '.join(reached) or 'none'}"
              + (f"; not {', '.join(never)}: no seed reached the target in both" if never
                 else "") + "): each seed's mean log ratio over its pairs, paired by seed")
    return replace(paired(label, "speedup", per_seed, variants, None, method=method), log=True)


# --------------------------------------------------------------------------- decisions


def _t_quantile(level: float, df: float) -> float:
    return float(stdtrit(df, 0.5 + level / 2))


def _sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom."""
    return float(stdtr(df, -t))


def p_values(e: Estimate) -> tuple[float, float]:
    """(p of "no difference", p of "not equivalent" in its two-sided-interval form: 2 × the
    TOST p, so p ≤ a ⇔ the (1 − a) interval lies inside ± margin; 1 without a margin)."""
    d, se, df = e.difference, e.se, e.df
    p_diff = min(1.0, 2 * _sf(abs(d - e.null) / se, df))
    if e.margin is None:
        return p_diff, 1.0
    tost = max(_sf((d - e.null + e.margin) / se, df), _sf((e.margin - d + e.null) / se, df))
    return p_diff, min(1.0, 2 * tost)


def holm_levels(p: list[float], alpha: float) -> tuple[list[float], list[float]]:
    """(Holm-adjusted p, the confidence of each answer's interval): the k-th smallest p is
    tested at α/(m − k + 1); answers from Holm's first non-rejection on share its level."""
    from statsmodels.stats.multitest import multipletests

    if not p:
        return [], []
    # statsmodels 0.15's Holm branch ends with gc.collect(), a walk of the whole heap (0.2 s
    # in a process with pandas loaded); frozen objects are skipped, so it costs microseconds.
    with heap.frozen():
        reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    order = np.argsort(p, kind="stable")
    m = len(p)
    stop = next((k for k, i in enumerate(order) if not reject[i]), m)
    levels = [0.0] * m
    for k, i in enumerate(order):
        levels[i] = 1 - alpha / (m - min(k, stop))
    return [float(a) for a in adjusted], levels


def decision(e: Estimate, level: float) -> tuple[str, list[float], bool]:
    """(decision, interval at `level`, inside the margin) of a testable estimate."""
    half = _t_quantile(level, e.df) * e.se
    lo, hi = e.difference - half, e.difference + half
    inside = e.margin is not None and e.null - e.margin < lo and hi < e.null + e.margin
    if lo > e.null:
        return "better", [lo, hi], inside
    if hi < e.null:
        return "worse", [lo, hi], inside
    return ("equivalent" if inside else "undecided"), [lo, hi], inside


def smallest_seeds(effect: float, alpha: float, alternative: str, fewest: int) -> int | None:
    """The fewest seeds n ≥ `fewest` at which a one-sample t-test of standardized effect
    `effect` at `alpha` has POWER (statsmodels TTestPower; power grows with n, so a coarse
    geometric grid brackets it and the integers inside find it); None beyond MAX_SEEDS."""
    from statsmodels.stats.power import TTestPower

    def power(n: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(TTestPower().power(effect_size=effect, nobs=n, alpha=alpha,
                                                 alternative=alternative))

    fewest = max(fewest, 2)
    if effect <= 0 or fewest > MAX_SEEDS:
        return None
    grid = np.unique(np.geomspace(fewest, MAX_SEEDS, 24).astype(int))
    enough = power(grid) >= POWER
    if not enough.any():
        return None
    k = int(np.argmax(enough))
    fine = np.arange(grid[k - 1] + 1 if k else fewest, grid[k] + 1)
    return int(fine[np.argmax(power(fine) >= POWER)])


def seeds_to_decide(e: Estimate, level: float) -> tuple[int | None, str]:
    """(about how many seeds decide the answer with POWER, if the observed difference and
    per-seed spread se × √seeds hold; what they would show: "difference" or "equivalence");
    (None, "") beyond MAX_SEEDS."""
    sd = e.se * math.sqrt(e.seeds)
    alpha, gap = 1 - level, abs(e.difference - e.null)
    found = [(smallest_seeds(gap / sd, alpha, "two-sided", e.seeds + 1), "difference")]
    if e.margin is not None and gap < e.margin:
        found.append((smallest_seeds((e.margin - gap) / sd, alpha / 2, "larger", e.seeds + 1),
                      "equivalence"))
    return min(((n, shows) for n, shows in found if n is not None), default=(None, ""))


def would_decide(e: Estimate, n: int | None, shows: str) -> str:
    """What would decide an undecided answer, in words."""
    if not e.testable:
        if e.difference is None:
            return ("a seed in which both variants reach the target" if e.kind == "speedup"
                    else "a seed with a finite result in every variant it rests on")
        return "at least 2 seeds in common: one measures no spread"
    if n is None:
        return f"over {MAX_SEEDS} seeds at the observed spread"
    if e.kind == "speedup":
        ratio = math.exp(e.difference) if e.log else e.difference
        return f"about {n} seeds to show that a ratio of {ratio:.2f} differs from 1"
    if shows == "difference":
        return f"about {n} seeds to show a {abs(e.difference - e.null):.1f}-point difference"
    return f"about {n} seeds to show equivalence within ± {e.margin:.1f} points"


def _record(e: Estimate, alpha: float, level: float | None, p_adjusted: float | None,
            m: int) -> dict[str, Any]:
    if level is not None:
        chosen, interval, inside = decision(e, level)
    else:
        chosen, interval, inside = "undecided", None, False
    n, shows = seeds_to_decide(e, level) if chosen == "undecided" and e.testable else (None, "")
    method = e.method + (f"; {HOLM} over {m} answer{'s' if m != 1 else ''} at {1 - alpha:.0%}"
                         if level is not None
                         else "; no interval")
    difference = e.difference
    if e.log:  # back to the ratio scale
        difference = None if difference is None else math.exp(difference)
        interval = None if interval is None else [math.exp(b) for b in interval]
    out = {"answer": e.answer, "kind": e.kind, "decision": chosen, "difference": difference,
           "interval": interval, "level": level, "margin": e.margin,
           "inside_margin": inside and chosen in ("better", "worse"), "seeds": e.seeds,
           "method": method, "variants": e.variants, "p_value": p_adjusted,
           "seeds_to_decide": n,
           "would_decide": would_decide(e, n, shows) if chosen == "undecided" else ""}
    if e.additivity is not None:
        out["additivity"] = e.additivity
    return out


def decide(estimates: list[Estimate], confidence: float) -> list[dict[str, Any]]:
    """Holm over the testable estimates, then each one's decision at its level."""
    alpha = 1 - confidence
    testable = [i for i, e in enumerate(estimates) if e.testable]
    p = [min(p_values(estimates[i])) for i in testable]
    adjusted, levels = holm_levels(p, alpha)
    at = {i: (levels[k], adjusted[k]) for k, i in enumerate(testable)}
    return [_record(e, alpha, *at.get(i, (None, None)), len(testable))
            for i, e in enumerate(estimates)]


def decide_study(study: Study, values: effects.Values, confidence: float = 0.95,
                 ratios: dict[str, dict[str, Any]] | None = None,
                 ratio_label: str = SPEEDUP) -> list[dict[str, Any]]:
    """Every question-level answer of `study` decided (see the module's docstring)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    estimates = factorial_estimates(study, values) if study.factors else []
    estimates += pair_estimates(study, values)
    if ratios:
        estimates.append(ratio_estimate(ratios, ratio_label))
    return decide(estimates, confidence)


def counts(decisions: list[dict[str, Any]]) -> dict[str, int]:
    """{"decided": answers not undecided, "answers": all of them}."""
    return {"decided": sum(d["decision"] != "undecided" for d in decisions),
            "answers": len(decisions)}
