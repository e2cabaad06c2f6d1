"""Effects paired by seed: planted main effects and interactions are recovered inside their
95% intervals (synthetic results, no training)."""

import itertools

import numpy as np
import pytest

from ablations.effects import contrast, effect_label, factorial_effects, pair_effects

FACTORS = {"activation": ["relu", "tanh"], "norm": ["none", "bn"], "dropout": ["none", "dropout"]}
REFERENCE = {"activation": "relu", "norm": "none", "dropout": "none"}


def grid(factors):
    """variant name → {factor: level}, named as config.factorial_cells names them."""
    cells = {}
    for combo in itertools.product(*factors.values()):
        name = "-".join(level for level in combo if level != "none") or "none"
        cells[name] = dict(zip(factors, combo))
    return cells


LEVELS = grid(FACTORS)
# Planted, in accuracy (0..1): tanh −3 points, BN +4, dropout −2, BN with dropout 5 more.
PLANTED = {"tanh": -0.03, "bn": 0.04, "dropout": -0.02}
BN_X_DROPOUT = 0.05


def simulate(rng, seeds, noise, levels=LEVELS):
    """Test accuracy per variant and seed: 0.8 + the seed's luck (shared by every variant of
    the seed) + planted effects + independent noise."""
    luck = rng.normal(0, 0.02, size=seeds)
    values = {}
    for name, cell in levels.items():
        planted = sum(PLANTED.get(level, 0.0) for level in cell.values())
        planted += BN_X_DROPOUT * (cell["norm"] == "bn" and cell["dropout"] == "dropout")
        values[name] = {f"seed{s}": 0.8 + luck[s] + planted + rng.normal(0, noise)
                        for s in range(seeds)}
    return values


def find(effects, kind, **match):
    found = [e for e in effects[kind] if all(e[k] == v for k, v in match.items())]
    assert len(found) == 1, (kind, match)
    return found[0]


def expected_effects():
    """(kind, match, planted value in points) for every effect of the 2x2x2 design."""
    out = [("main", {"factor": "activation"}, 100 * PLANTED["tanh"]),
           ("main", {"factor": "norm"}, 100 * (PLANTED["bn"] + BN_X_DROPOUT / 2)),
           ("main", {"factor": "dropout"}, 100 * (PLANTED["dropout"] + BN_X_DROPOUT / 2)),
           ("interaction", {"factors": ["norm", "dropout"]}, 100 * BN_X_DROPOUT),
           ("interaction", {"factors": ["activation", "norm"]}, 0.0),
           ("interaction", {"factors": ["activation", "dropout"]}, 0.0)]
    for activation, dropout in itertools.product(FACTORS["activation"], FACTORS["dropout"]):
        planted = PLANTED["bn"] + BN_X_DROPOUT * (dropout == "dropout")
        out.append(("simple", {"factor": "norm",
                               "within": {"activation": activation, "dropout": dropout}},
                    100 * planted))
    return out


def test_noise_free_design_gives_the_planted_effects_exactly():
    effects = factorial_effects(simulate(np.random.default_rng(0), 3, 0.0), LEVELS, REFERENCE)
    assert len(effects["main"]) == 3 and len(effects["interaction"]) == 3
    assert len(effects["simple"]) == 3 * 4  # each factor within the 4 settings of the others
    for kind, match, planted in expected_effects():
        effect = find(effects, kind, **match)
        assert effect["difference"] == pytest.approx(planted, abs=1e-9)
        assert effect["ci"] == pytest.approx(0.0, abs=1e-9) and effect["n"] == 3


def test_planted_effects_are_inside_their_intervals_about_95_percent_of_the_time():
    """Seeds' shared luck cancels (paired); the independent noise makes the intervals. Over
    300 simulated studies each interval covers its planted value at about its 95 % rate."""
    rng = np.random.default_rng(16)
    covered = {i: 0 for i in range(len(expected_effects()))}
    trials = 300
    for _ in range(trials):
        effects = factorial_effects(simulate(rng, 4, 0.01), LEVELS, REFERENCE)
        for i, (kind, match, planted) in enumerate(expected_effects()):
            effect = find(effects, kind, **match)
            covered[i] += abs(effect["difference"] - planted) <= effect["ci"]
    rates = [count / trials for count in covered.values()]
    assert min(rates) >= 0.90 and max(rates) <= 0.99, rates
    assert np.mean(rates) == pytest.approx(0.95, abs=0.02)


def test_large_planted_interaction_is_detected():
    effects = factorial_effects(simulate(np.random.default_rng(1), 5, 0.005), LEVELS, REFERENCE)
    assert find(effects, "interaction", factors=["norm", "dropout"])["judgement"] == "better"
    assert find(effects, "main", factor="norm")["judgement"] == "better"
    assert find(effects, "main", factor="activation")["judgement"] == "worse"


def test_three_level_factor_compares_each_level_with_the_reference():
    factors = {"initializer": ["glorot", "zeros", "he"], "regularizer": ["none", "l1", "l2"]}
    levels = grid(factors)
    values = {name: {"seed0": 0.8 + 0.1 * (cell["initializer"] == "zeros")
                     - 0.02 * (cell["regularizer"] == "l2")} for name, cell in levels.items()}
    effects = factorial_effects(values, levels, {"initializer": "glorot", "regularizer": "none"})
    assert [(e["level"], e["reference"]) for e in effects["main"]] == [
        ("zeros", "glorot"), ("he", "glorot"), ("l1", "none"), ("l2", "none")]
    assert find(effects, "main", factor="initializer", level="zeros")["difference"] == pytest.approx(10)
    l2 = [e for e in effects["simple"] if e["level"] == "l2"]
    assert [e["within"] for e in l2] == [{"initializer": i} for i in factors["initializer"]]
    assert all(e["difference"] == pytest.approx(-2) and e["ci"] is None for e in l2)  # one seed
    assert len(effects["interaction"]) == 2 * 2


def test_pairs_leave_out_seeds_with_a_diverged_run_and_count_them():
    values = {"a": {"seed0": 0.9, "seed1": float("nan"), "seed2": 0.8},
              "b": {"seed0": 0.8, "seed1": 0.7, "seed2": None}}
    (pair,) = pair_effects(values, [("a", "b")])
    assert (pair["n"], pair["excluded"], pair["ci"]) == (1, 2, None)
    assert pair["difference"] == pytest.approx(10.0) and pair["judgement"] is None
    assert contrast(values, {"a": 1.0, "b": -1.0})["per_seed"] == {"seed0": pytest.approx(10.0)}
    assert effect_label(pair) == "a − b"
