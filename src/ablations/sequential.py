"""Seeds where answers are undecided: a study whose `seeds` is a range {min, max}
(config.SeedRange) trains seeds round by round.

Round 1 trains seeds 0 … min−1 of every variant. After each round the study's answers are
decided (ablations.decisions) on everything trained so far; the variants an undecided answer
rests on (and the transfer sources they start from) get their next seed; the rounds end when
every answer is decided, when no undecided answer has a variant below `max`, or after the
last planned look. The rounds are a function of the units' test results, and those of the
params (same params → same units, bit for bit), so the train stage and the evaluate stage
replay the same rounds, and a workspace whose units are all current trains nothing.

Looking after every round and stopping once decided would inflate the error rate if each look
used the plain 95 % intervals (optional stopping). The procedure here is Bonferroni over the
planned looks: at most K = max − min + 1 rounds, each deciding at confidence 1 − α/K (Holm
across the study's answers within the look, as decisions.decide_study does). The chance that
any interval at any look misses its true difference is at most K · α/K = α, so every final
decision is wrong with probability at most α, and the intervals at stopping cover with
probability at least 1 − α, however the stopping depended on the data. It needs no model of
how results evolve; its price is wider intervals at every look (a t quantile at 1 − α/K).
tests/test_sequential_sim.py runs these rounds on synthetic studies and checks both rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ablations.config import Study

Allocation = dict[str, int]  # variant → seeds trained (seeds 0 … n−1)
METHOD = "Bonferroni over {looks} planned looks (each at {level:.4g} % confidence)"


def looks(study: Study) -> int:
    """K: the most rounds a sequential study runs (1 for a list of seeds)."""
    return study.seeds.max - study.seeds.min + 1 if study.sequential else 1


def look_confidence(study: Study, confidence: float) -> float:
    """The confidence each look decides at: 1 − (1 − confidence) / K."""
    return 1 - (1 - confidence) / looks(study)


def method(study: Study, confidence: float) -> str | None:
    """The procedure in words (None for a list of seeds, or a range of one look)."""
    if looks(study) == 1:
        return None
    return METHOD.format(looks=looks(study), level=100 * look_confidence(study, confidence))


def first_round(study: Study) -> Allocation:
    return {name: study.seeds.min for name in study.variants}


def next_round(study: Study, allocation: Allocation, decisions: list[dict[str, Any]]
               ) -> Allocation | None:
    """The next round's seeds: one more for each variant an undecided answer rests on (below
    `max`), and for the transfer source it starts from; None when no variant grows."""
    grow = {name for d in decisions if d["decision"] == "undecided" for name in d["variants"]
            if allocation[name] < study.seeds.max}
    if not grow:
        return None
    grown = {name: n + (name in grow) for name, n in allocation.items()}
    for name in study.variants:  # a unit with seed k starts from its source's seed k
        source = study.source_of(name)
        if source is not None:
            grown[source] = max(grown[source], grown[name])
    return grown


def run_rounds(study: Study, decide: Callable[[Allocation], list[dict[str, Any]]],
               train: Callable[[Allocation], None] | None = None
               ) -> tuple[Allocation, list[dict[str, Any]], int]:
    """(final allocation, its decisions, looks taken). `train(allocation)` makes every unit of
    the allocation exist (the train stage trains the missing ones; evaluate only reads);
    `decide(allocation)` decides the study's answers on those units at
    look_confidence(study, …)."""
    allocation = first_round(study)
    for look in range(1, looks(study) + 1):
        if train is not None:
            train(allocation)
        decided = decide(allocation)
        following = next_round(study, allocation, decided) if look < looks(study) else None
        if following is None:
            return allocation, decided, look
        allocation = following
    raise AssertionError("unreachable: the last look returns")
