"""Simulation: ablations.decisions over hundreds of synthetic studies with planted effects
(numpy only, no training) — how often is a decision wrong, how often does an interval cover
the planted effect?

Three designs, as the pipeline's studies have them:
  paired — a baseline and 4 variants (3, 5 or 8 seeds), each seed shifting every variant alike
      (its data order and initial weights) plus each run's own noise; answers: each variant vs
      the baseline and one `also_compare` pair, paired by seed;
  factorial — 6 × 3 levels, one seed per cell (init_reg's shape): additive effects plus noise;
      answers: the 7 main effects, from the additive model (ANOVA without replication);
  replicated — 2 × 2 × 2 levels (batchnorm's shape), 3, 4 or 6 seeds per cell: main effects
      plus a planted interaction, a seed shift shared by the cells, each cell with its own
      spread (0.3–1.5 points); answers: the 3 main effects, from the cell-means model with
      seeds as blocks, and one speed-up over 4 BN pairs (per-seed ratios, log-normal around a
      planted geometric mean of 1, 1.1 or 1.5 — or their inverses — each pair off it by its
      own factor), decided on the log scale.
Planted effects (points; margin 1): 0, inside the margin (±0.4), just beyond it (±1.2) and
far beyond (±3). A decision is wrong when it says better/worse of a zero effect or the wrong
side of a non-zero one, or equivalent of an effect beyond the margin.
"""

from __future__ import annotations

import math

import numpy as np

from ablations.config import Study
from ablations.decisions import decide_study

MARGIN = 1.0
PLANTED = np.array([0.0, 0.4, -0.4, 1.2, -1.2, 3.0, -3.0])  # points
STUDIES = 240  # per design: 480 in all
SEED_SPREAD, NOISE = 2.0, 0.5  # points: shared by a seed's variants / each run's own


def paired_study(n_variants: int = 4) -> Study:
    names = ["base"] + [f"v{i}" for i in range(n_variants)]
    return Study(question="q", data="d", seeds=[0, 1, 2], baseline="base",
                 also_compare=[("v0", "v1")], target_val_accuracy=0.5, defaults={},
                 variants={name: {} for name in names}, margin=MARGIN)


def factorial_study() -> Study:
    return Study(question="q", data="d", seeds=[0], baseline="a0-b0", target_val_accuracy=0.5,
                 defaults={}, margin=MARGIN,
                 factors={"a": {f"a{i}": {} for i in range(6)}, "b": {f"b{i}": {} for i in range(3)}})


def replicated_study() -> Study:
    return Study(question="q", data="d", seeds=[0, 1, 2], baseline="a0-b0-c0",
                 target_val_accuracy=0.5, defaults={}, margin=MARGIN,
                 factors={f: {f"{f}0": {}, f"{f}1": {}} for f in "abc"})


SPEEDUP = "speed-up"
PLANTED_LOG_RATIO = np.log([1.0, 1.1, 1 / 1.1, 1.5, 1 / 1.5])


def simulate_replicated(rng: np.random.Generator, study: Study):
    """Cell means 80 + main effects + an a × b interaction; returns the values, the truth
    (each main effect as its contrast averages the cells; the speed-up's geometric mean) and
    the speed-up's per-seed ratios."""
    seeds = int(rng.choice([3, 4, 6]))
    main = {f: float(rng.choice(PLANTED)) for f in "abc"}
    interaction = float(rng.choice(PLANTED))
    shift = rng.normal(0, SEED_SPREAD, seeds)
    values, mean = {}, {}
    for name, cell in study.levels().items():
        on = {f: cell[f] == f"{f}1" for f in "abc"}
        mean[name] = (80 + sum(main[f] for f in "abc" if on[f])
                      + interaction * (on["a"] and on["b"]))
        spread = rng.uniform(0.3, 1.5)
        values[name] = {f"seed{s}": (mean[name] + shift[s] + rng.normal(0, spread)) / 100
                        for s in range(seeds)}
    truth = {}
    for f in "abc":
        at = [n for n, c in study.levels().items() if c[f] == f"{f}1"]
        ref = [n for n, c in study.levels().items() if c[f] == f"{f}0"]
        truth[f"{f} {f}1 − {f}0"] = float(np.mean([mean[n] for n in at])
                                          - np.mean([mean[n] for n in ref]))
    log_ratio = float(rng.choice(PLANTED_LOG_RATIO))
    offsets = rng.normal(0, 0.1, 4)
    offsets -= offsets.mean()  # the pairs' own factors: their geometric mean is the planted one
    seed_log = rng.normal(0, 0.05, seeds)
    ratios = {f"pair{k}": {"variants": [f"bn{k}", f"twin{k}"],
                           "values": {f"seed{s}": float(np.exp(log_ratio + offsets[k] + seed_log[s]
                                                               + rng.normal(0, 0.15)))
                                      for s in range(seeds)}} for k in range(4)}
    truth[SPEEDUP] = log_ratio  # on the log scale: 0 is "no speed-up"
    return values, truth, ratios


def simulate_paired(rng: np.random.Generator, study: Study):
    seeds = int(rng.choice([3, 5, 8]))
    effect = {"base": 0.0, **{f"v{i}": float(rng.choice(PLANTED)) for i in range(4)}}
    shift = rng.normal(0, SEED_SPREAD, seeds)
    values = {name: {f"seed{s}": (80 + e + shift[s] + rng.normal(0, NOISE)) / 100
                     for s in range(seeds)} for name, e in effect.items()}
    truth = {f"v{i} − base": effect[f"v{i}"] for i in range(4)}
    truth["v0 − v1"] = effect["v0"] - effect["v1"]
    return values, truth, None


def simulate_factorial(rng: np.random.Generator, study: Study):
    a = {f"a{i}": (0.0 if i == 0 else float(rng.choice(PLANTED))) for i in range(6)}
    b = {f"b{i}": (0.0 if i == 0 else float(rng.choice(PLANTED))) for i in range(3)}
    values = {name: {"seed0": (80 + a[cell["a"]] + b[cell["b"]] + rng.normal(0, NOISE)) / 100}
              for name, cell in study.levels().items()}
    truth = {**{f"a a{i} − a0": a[f"a{i}"] for i in range(1, 6)},
             **{f"b b{i} − b0": b[f"b{i}"] for i in range(1, 3)}}
    return values, truth, None


def wrong(decision: str, effect: float) -> bool:
    if decision == "better":
        return effect <= 0
    if decision == "worse":
        return effect >= 0
    return decision == "equivalent" and abs(effect) > MARGIN


DESIGNS = {"paired": (paired_study, simulate_paired),
           "factorial": (factorial_study, simulate_factorial),
           "replicated": (replicated_study, simulate_replicated)}


def run(design: str, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    make_study, simulate = DESIGNS[design]
    study = make_study()
    tally = {"answers": 0, "wrong": 0, "studies_wrong": 0, "covered": 0, "intervals": 0,
             "zero": 0, "zero_directed": 0, "beyond": 0, "beyond_equivalent": 0, "decided": 0,
             "far": 0, "far_decided": 0, "small": 0, "small_equivalent": 0}
    for _ in range(STUDIES):
        values, truth, ratios = simulate(rng, study)
        decisions = decide_study(study, values, ratios=ratios, ratio_label=SPEEDUP)
        assert {d["answer"] for d in decisions} == set(truth)
        any_wrong = False
        for d in decisions:
            effect = truth[d["answer"]]
            bad = wrong(d["decision"], effect)
            any_wrong |= bad
            tally["answers"] += 1
            tally["wrong"] += bad
            tally["decided"] += d["decision"] != "undecided"
            if effect == 0:
                tally["zero"] += 1
                tally["zero_directed"] += d["decision"] in ("better", "worse")
            if d["interval"] is not None:
                tally["intervals"] += 1
                # a speed-up's interval is on the ratio scale, its truth a log ratio
                at = math.exp(effect) if d["kind"] == "speedup" else effect
                tally["covered"] += d["interval"][0] <= at <= d["interval"][1]
            if d["kind"] == "speedup":
                continue  # no margin: the categories below are in points
            if abs(effect) >= 3:
                tally["far"] += 1
                tally["far_decided"] += d["decision"] in ("better", "worse")
            if abs(effect) < MARGIN / 2:
                tally["small"] += 1
                tally["small_equivalent"] += d["decision"] == "equivalent"
            if abs(effect) > MARGIN:
                tally["beyond"] += 1
                tally["beyond_equivalent"] += d["decision"] == "equivalent"
        tally["studies_wrong"] += any_wrong
    return tally


def check(design: str, seed: int) -> None:
    t = run(design, seed)
    rate = {"wrong decisions": t["wrong"] / t["answers"],
            "better/worse of a zero effect": t["zero_directed"] / t["zero"],
            "equivalent beyond the margin": t["beyond_equivalent"] / t["beyond"],
            "studies with any wrong decision": t["studies_wrong"] / STUDIES,
            "coverage": t["covered"] / t["intervals"],
            "decided": t["decided"] / t["answers"],
            "|effect| ≥ 3 shown better/worse": t["far_decided"] / t["far"],
            "|effect| < margin/2 shown equivalent": t["small_equivalent"] / t["small"]}
    print(f"\n{design}: {STUDIES} studies, {t['answers']} answers: "
          + ", ".join(f"{k} {v:.4f}" for k, v in rate.items()))
    assert t["intervals"] == t["answers"]  # every design here measures a spread
    # Holm holds the chance of any wrong decision in a study at 5 %; per answer it is lower.
    assert rate["wrong decisions"] <= 0.05
    # Per true-null answer Holm's bound is 5 % too; over the few hundred zero effects of one
    # design, 2 binomial SE at p = 0.05 leave room for Monte-Carlo noise at exactly 5 %.
    assert rate["better/worse of a zero effect"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / t["zero"])
    assert rate["equivalent beyond the margin"] <= 0.05
    # Family-wise, over 240 studies: binomial SE at p = 0.05 is sqrt(.05 * .95 / 240) = 0.014;
    # 0.05 + 2 SE = 0.078 leaves room for Monte-Carlo noise at a true rate of exactly 5 %.
    assert rate["studies with any wrong decision"] <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / STUDIES)
    # Each interval is at ≥ 95 % (Holm's levels are higher). Over ≥ 1200 answers, binomial SE
    # at 0.95 is ≤ 0.0063; 0.93 is 3 SE below — intervals of one study are correlated (they
    # share the baseline or the residual variance), which widens the real Monte-Carlo spread.
    assert rate["coverage"] >= 0.93
    # The rules decide, not just refrain: large effects are found, small ones called equivalent.
    assert rate["|effect| ≥ 3 shown better/worse"] >= 0.5
    assert rate["|effect| < margin/2 shown equivalent"] >= 0.1


def test_paired_by_seed_design_decides_with_few_wrong_decisions_and_covers():
    check("paired", 2024)


def test_unreplicated_factorial_design_decides_with_few_wrong_decisions_and_covers():
    check("factorial", 2025)


def test_replicated_factorial_and_speedup_decide_with_few_wrong_decisions_and_cover():
    check("replicated", 2026)
