"""The sequential seed procedure (ablations.sequential) on synthetic studies with planted
effects: the real rounds (run_rounds, next_round) and the real decisions (decide_study), with
numpy's random numbers in place of trainings. Optional stopping must not inflate the errors:
wrong decisions at most 5 % and the intervals at stopping covering at least 95 %, up to the
Monte-Carlo error of this many studies (printed).

Each study has three variants a (baseline), b, c and three answers (b − a, c − a and the
named pair b − c), seeds {min 2, max 8}: up to 7 looks. A variant's test accuracy per seed is
its planted mean + the seed's shared luck (which pairing by seed removes) + its own noise.
"""

import itertools
import math

import numpy as np

from ablations import sequential
from ablations.config import Study
from ablations.decisions import decide_study

MARGIN = 1.0  # points
NOISE = 0.5  # points: a variant's own seed-to-seed spread (the studies' is 0.3-1.5)
SEED_LUCK = 2.0  # points, shared by the variants of one seed
# Planted b − a and c − a: none, a real difference inside the margin, one beyond it.
EFFECTS = (0.0, 0.5 * MARGIN, 2.0 * MARGIN)
REPEATS = 34  # studies per (b, c) combination: 9 × 34 = 306 studies, 918 answers
RANGE = {"min": 2, "max": 8}


def study() -> Study:
    return Study(question="synthetic", data="d", seeds=RANGE, baseline="a",
                 also_compare=[["b", "c"]], target_val_accuracy=0.5, defaults={},
                 variants={"a": {}, "b": {}, "c": {}}, margin=MARGIN)


def simulate(spec: Study, means: dict[str, float], rng: np.random.Generator):
    """Run the rounds on draws for seeds 0…max−1 (a seed's draw does not depend on when it
    is trained); returns (decisions at stopping, looks, seeds trained)."""
    luck = rng.normal(0, SEED_LUCK, RANGE["max"])
    draws = {name: 80.0 + mean + luck + rng.normal(0, NOISE, RANGE["max"])
             for name, mean in means.items()}
    level = sequential.look_confidence(spec, 0.95)

    def decide(allocation):
        values = {name: {f"seed{k}": draws[name][k] / 100 for k in range(n)}
                  for name, n in allocation.items()}
        return decide_study(spec, values, level)

    allocation, decided, looks = sequential.run_rounds(spec, decide)
    return decided, looks, sum(allocation.values())


def wrong(decision: str, truth: float) -> bool:
    """A decision the planted difference contradicts."""
    return ((decision == "better" and truth <= 0) or (decision == "worse" and truth >= 0)
            or (decision == "equivalent" and abs(truth) >= MARGIN))


def test_sequential_rounds_keep_error_rates_and_coverage_under_optional_stopping():
    spec, rng = study(), np.random.default_rng(20261206)
    answers = wrong_answers = covered = with_interval = undecided = 0
    studies = studies_wrong = looks_sum = seeds_sum = 0
    for (b, c), _ in itertools.product(itertools.product(EFFECTS, EFFECTS), range(REPEATS)):
        truths = {"b − a": b, "c − a": c, "b − c": b - c}
        decided, looks, seeds = simulate(spec, {"a": 0.0, "b": b, "c": c}, rng)
        assert {d["answer"] for d in decided} == set(truths)
        bad = [d for d in decided if wrong(d["decision"], truths[d["answer"]])]
        studies, studies_wrong = studies + 1, studies_wrong + bool(bad)
        answers, wrong_answers = answers + len(decided), wrong_answers + len(bad)
        undecided += sum(d["decision"] == "undecided" for d in decided)
        for d in decided:
            if d["interval"] is not None:
                with_interval += 1
                covered += d["interval"][0] <= truths[d["answer"]] <= d["interval"][1]
        looks_sum, seeds_sum = looks_sum + looks, seeds_sum + seeds
    family_rate = studies_wrong / studies
    answer_rate = wrong_answers / answers
    coverage = covered / with_interval
    # Monte-Carlo slack: 2 binomial standard errors at the bound itself.
    slack_studies = 2 * math.sqrt(0.05 * 0.95 / studies)
    slack_answers = 2 * math.sqrt(0.05 * 0.95 / with_interval)
    print(f"\n{studies} sequential studies ({answers} answers), seeds {RANGE}, "
          f"{sequential.method(spec, 0.95)}:"
          f"\n  studies with a wrong decision {family_rate:.2%} (bound 5% + slack "
          f"{slack_studies:.2%}); wrong answers {answer_rate:.2%}"
          f"\n  coverage at stopping {coverage:.2%} of {with_interval} intervals (bound 95% − "
          f"slack {slack_answers:.2%}); undecided {undecided / answers:.1%}; mean looks "
          f"{looks_sum / studies:.2f}, mean seeds per variant {seeds_sum / studies / 3:.2f}")
    assert studies >= 300
    assert family_rate <= 0.05 + slack_studies
    assert answer_rate <= 0.05 + slack_answers
    assert coverage >= 0.95 - slack_answers
    assert undecided < answers  # the procedure decides something: not vacuously safe


def test_rounds_spend_seeds_only_where_answers_are_undecided():
    """After round 1, only the variants of undecided answers grow, and a transfer source
    grows with the variant that starts from it."""
    spec = Study(question="q", data="d", seeds={"min": 2, "max": 4}, baseline="scratch",
                 target_val_accuracy=0.5, defaults={},
                 variants={"source": {}, "scratch": {}, "frozen": {"init_from": "source"},
                           "finetune": {"init_from": "source"}})
    decisions = [{"decision": "better", "variants": ["frozen", "scratch"]},
                 {"decision": "undecided", "variants": ["finetune", "scratch"]}]
    grown = sequential.next_round(spec, sequential.first_round(spec), decisions)
    assert grown == {"source": 3, "scratch": 3, "frozen": 2, "finetune": 3}
    at_max = {"source": 4, "scratch": 4, "frozen": 2, "finetune": 4}
    assert sequential.next_round(spec, at_max, decisions) is None  # nothing below max
    assert sequential.looks(spec) == 3
    assert math.isclose(sequential.look_confidence(spec, 0.95), 1 - 0.05 / 3)
    calls = []

    def decide(allocation):
        calls.append(dict(allocation))
        return decisions

    final, _, looks = sequential.run_rounds(spec, decide)
    assert looks == 3 and final == at_max  # stops at the last planned look
    assert [c["finetune"] for c in calls] == [2, 3, 4]
