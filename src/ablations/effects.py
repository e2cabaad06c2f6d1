"""Effects of a study's factors on test accuracy: differences with 95% intervals paired by seed.

    python -c "from ablations.effects import contrast; print(contrast(
        {'a': {'seed0': .9, 'seed1': .8}, 'b': {'seed0': .85, 'seed1': .78}}, {'a': 1, 'b': -1}))"

Every effect is a *contrast*: a weighted sum of variants' test accuracies, computed seed by
seed (variants trained with the same seed share data order and initial weights, so pairing
removes that seed's luck), then a Student-t interval over the seeds' values. A factorial
study (config.Study.factors) gets, for each factor level against the reference level (the
baseline's):
  simple — within one combination of the other factors' levels (BN under relu + dropout);
  main — the simple effects averaged over every combination of the others;
  interaction — for two factors, how much the first one's effect changes when the second
      moves from its reference level to another (0 = the two effects add up), averaged over
      the remaining factors.
Any study also gets `pairs`: each variant against the baseline and each `also_compare` pair.
Differences are in percentage points of test accuracy.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ablations import stats

Values = dict[str, dict[str, float | None]]  # variant → {"seed0": test accuracy, …}
POINTS = 100.0  # accuracy 0..1 → percentage points


def contrast(values: Values, weights: dict[str, float]) -> dict[str, Any]:
    """Σ weight × accuracy per seed, over the seeds where every weighted variant is finite:
    difference (points), ci (half-width, points; None with fewer than 2 seeds), n (seeds
    used), excluded (seeds left out: a diverged run in one of the cells), per_seed."""
    seeds = sorted(set().union(*(values[name] for name in weights)))
    per_seed = {}
    for seed in seeds:
        cells = [values[name].get(seed) for name in weights]
        if all(v is not None and np.isfinite(v) for v in cells):
            per_seed[seed] = POINTS * sum(w * v for w, v in zip(weights.values(), cells))
    mean, half = stats.mean_ci(per_seed.values())
    return {"variants": [name for name, w in weights.items() if w != 0],
            "difference": mean, "ci": half, "n": len(per_seed),
            "excluded": len(seeds) - len(per_seed), "per_seed": per_seed,
            "judgement": stats.judge(mean, half)}


def _cells(factors: dict[str, list[str]], fixed: dict[str, str]) -> list[dict[str, str]]:
    """Every combination of levels of the factors not in `fixed`, each merged with `fixed`."""
    others = [f for f in factors if f not in fixed]
    return [{**fixed, **dict(zip(others, combo))}
            for combo in itertools.product(*(factors[f] for f in others))]


def _named(levels: dict[str, dict[str, str]]) -> dict[tuple, str]:
    """(level of each factor, in factor order) → variant name."""
    return {tuple(cell.values()): name for name, cell in levels.items()}


def factorial_effects(values: Values, levels: dict[str, dict[str, str]],
                      reference: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """{"simple": […], "main": […], "interaction": […]} for a full factorial `levels`
    (variant → {factor: level}, from config.Study.levels); `reference` is the reference level
    of each factor (the baseline's cell)."""
    factors = {f: list(dict.fromkeys(cell[f] for cell in levels.values())) for f in reference}
    name_of = _named(levels)

    def name(cell: dict[str, str]) -> str:
        return name_of[tuple(cell[f] for f in factors)]

    out: dict[str, list[dict[str, Any]]] = {"simple": [], "main": [], "interaction": []}
    for factor, level in ((f, lv) for f in factors for lv in factors[f] if lv != reference[f]):
        cells = _cells(factors, {factor: level})
        for cell in cells:
            within = {f: cell[f] for f in factors if f != factor}
            weights = {name(cell): 1.0, name({**cell, factor: reference[factor]}): -1.0}
            out["simple"].append({"factor": factor, "level": level, "reference": reference[factor],
                                  "within": within, **contrast(values, weights)})
        weights = _average_of_differences(cells, factor, reference, name)
        out["main"].append({"factor": factor, "level": level, "reference": reference[factor],
                            "weights": weights, **contrast(values, weights)})
    for first, second in itertools.combinations(factors, 2):
        for a, b in itertools.product(factors[first], factors[second]):
            if a == reference[first] or b == reference[second]:
                continue
            weights = _interaction_weights(factors, first, a, second, b, reference, name)
            out["interaction"].append({
                "factors": [first, second], "levels": [a, b],
                "references": [reference[first], reference[second]],
                **contrast(values, weights)})
    return out


def _average_of_differences(cells, factor, reference, name) -> dict[str, float]:
    weights: dict[str, float] = {}
    for cell in cells:
        for variant, sign in ((name(cell), 1.0), (name({**cell, factor: reference[factor]}), -1.0)):
            weights[variant] = weights.get(variant, 0.0) + sign / len(cells)
    return weights


def _interaction_weights(factors, first, a, second, b, reference, name) -> dict[str, float]:
    """[acc(a, b) − acc(ref, b)] − [acc(a, ref) − acc(ref, ref)], averaged over the other
    factors' combinations."""
    rest = _cells({f: v for f, v in factors.items() if f not in (first, second)}, {})
    weights: dict[str, float] = {}
    for cell in rest:
        for la, lb, sign in ((a, b, 1.0), (reference[first], b, -1.0),
                             (a, reference[second], -1.0), (reference[first], reference[second], 1.0)):
            variant = name({**cell, first: la, second: lb})
            weights[variant] = weights.get(variant, 0.0) + sign / len(rest)
    return weights


def pair_effects(values: Values, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """a − b for each (a, b), paired by seed."""
    return [{"variant": a, "vs": b, **contrast(values, {a: 1.0, b: -1.0})} for a, b in pairs]


def effect_label(effect: dict[str, Any]) -> str:
    """Short name of an effect: "norm bn − none | activation=relu, dropout=none",
    "norm bn × dropout dropout", "relu-bn − relu"."""
    if "variant" in effect:
        return f"{effect['variant']} − {effect['vs']}"
    if "factors" in effect:
        (f1, f2), (l1, l2) = effect["factors"], effect["levels"]
        return f"{f1} {l1} × {f2} {l2}"
    label = f"{effect['factor']} {effect['level']} − {effect['reference']}"
    if "within" in effect:
        label += " | " + ", ".join(f"{f}={lv}" for f, lv in effect["within"].items())
    return label
