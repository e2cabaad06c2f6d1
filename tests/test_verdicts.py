"""Property tests: the words of a verdict never say more than its numbers (seeded random
loops over synthetic effects; hypothesis is not a dependency)."""

import random
import re

from ablations.decisions import DECISIONS, Estimate, decide
from ablations.verdicts import (decision_sentence, decision_words, difference_sentence,
                                interaction_sentence, shown, within_settings_sentence)

DIRECTED = re.compile(r"\b(better|worse|helps?|hurts?|above|below|larger|smaller)\b")
CASES = 2000


def random_effect(rng: random.Random) -> dict:
    """difference/ci in points: no result, one seed, interval covering 0, or excluding it."""
    kind = rng.choice(["none", "one", "covers", "excludes", "edge"])
    d = rng.uniform(-30, 30)
    if kind == "none":
        return {"difference": None, "ci": None, "n": 0}
    if kind == "one":
        return {"difference": d, "ci": None, "n": 1}
    if kind == "covers":
        return {"difference": d, "ci": abs(d) + rng.uniform(0, 10), "n": rng.randint(2, 9)}
    if kind == "edge":  # |d| == ci: the interval touches 0, which is covering it
        return {"difference": d, "ci": abs(d), "n": 3}
    return {"difference": d, "ci": abs(d) * rng.uniform(0, 0.99), "n": rng.randint(2, 9)}


def random_names(rng: random.Random, count: int) -> list[str]:
    """Distinct names none of which contains another."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice("bcdfghjkmpqrtvwxz") for _ in range(6))
        if all(name not in other and other not in name for other in names):
            names.append(name)
    return names


def check_words(text: str, effect: dict) -> None:
    words = set(DIRECTED.findall(text))
    if not shown(effect):
        assert not words, text
        return
    positive = effect["difference"] > 0
    assert words, text
    assert words <= ({"better", "above", "larger"} if positive else {"worse", "below", "smaller"}), text
    assert f"{abs(effect['difference']):.1f} ± {effect['ci']:.1f}" in text, text


def test_difference_sentence_says_no_more_than_the_interval():
    rng = random.Random(16)
    for _ in range(CASES):
        effect = random_effect(rng)
        names = random_names(rng, 5)
        text = difference_sentence(names[0], names[1], effect)
        check_words(text, effect)
        assert names[0] in text and names[1] in text, text
        assert not any(other in text for other in names[2:]), text
        if effect["difference"] is not None and not shown(effect):
            assert f"{effect['difference']:+.1f}" in text  # the number is still given


def test_interaction_sentence_says_no_more_than_the_interval():
    rng = random.Random(17)
    for _ in range(CASES):
        effect = random_effect(rng)
        names = random_names(rng, 8)
        effect.update(factors=names[0:2], levels=names[2:4], references=names[4:6])
        text = interaction_sentence(effect)
        check_words(text, effect)
        assert all(name in text for name in names[:6]) or not shown(effect), text
        assert not any(other in text for other in names[6:]), text
        if not shown(effect):
            assert "do not simply add up" not in text, text


def test_within_settings_sentence_marks_each_setting_by_its_own_interval():
    """In "a x − y, within each setting (…): b=z: +x ± y (better); …" every mark follows that
    setting's own interval, and the sentence names the main effect, never its decision."""
    rng = random.Random(18)
    for _ in range(300):
        names = random_names(rng, 6)
        main = {"factor": names[0], "level": names[1], "reference": names[2], **random_effect(rng)}
        simple = [{"factor": names[0], "level": names[1], "reference": names[2],
                   "within": {names[3]: names[4 + i]}, **random_effect(rng)} for i in range(2)]
        text = within_settings_sentence(main, simple)
        head, _, within = text.partition(": ")
        assert head == f"{names[0]} {names[1]} − {names[2]}, within each setting (95% intervals, each on its own)"
        for i, (part, effect) in enumerate(zip(within.split("; "), simple)):
            assert part.startswith(f"{names[3]}={names[4 + i]}: ")
            mark = part.rsplit("(", 1)[1].rstrip(")")
            assert mark == (("better" if effect["difference"] > 0 else "worse")
                            if shown(effect) else "not shown"), part


def test_seeds_left_out_are_said():
    effect = {"difference": -31.0, "ci": 50.0, "n": 2, "excluded": 1}
    text = difference_sentence("ones", "glorot", effect)
    assert text.endswith("so no difference is shown (1 seed left out: a run diverged)")
    effect = {"difference": None, "ci": None, "n": 0, "excluded": 2}
    assert difference_sentence("ones", "glorot", effect) == (
        "ones vs glorot: no seed has a finite result in every variant it needs "
        "(2 seeds left out: a run diverged)")


def random_decisions(rng: random.Random) -> list[dict]:
    """1-4 answers decided together by ablations.decisions (Holm across them): differences in
    points or speed-up ratios, with or without a spread, decided or not."""
    out = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["main", "pair", "speedup"])
        null, margin = (1.0, None) if kind == "speedup" else (0.0, rng.choice([0.5, 1.0, 2.0]))
        scale = 0.05 if kind == "speedup" else 1.0
        seeds = rng.randint(1, 9)
        spread = rng.random() > 0.15 and seeds > 1
        names = random_names(rng, 2)
        size = rng.choice([0.05, 1.0])  # small differences too: equivalence is reachable
        out.append(Estimate(
            f"{names[0]} − {names[1]}", kind, names, null + scale * size * rng.uniform(-6, 6),
            scale * 10 ** rng.uniform(-2, 0.5) if spread else None, seeds - 1 if spread else None,
            seeds, "synthetic", null, margin))
    return decide(out, rng.choice([0.9, 0.95, 0.99]))


WORDS = re.compile(r"\b(better|worse|equivalent|undecided|fewer|more|above|below|larger|smaller)\b")


def test_decision_sentence_says_its_decision_and_no_other():
    """The words follow the decision: its word once, no other decision's word, a direction
    only for better / worse and on the side the decision says; the ± is the decision's."""
    rng = random.Random(20)
    decided = [d for _ in range(150) for d in random_decisions(rng)]
    assert {d["decision"] for d in decided} == set(DECISIONS)  # every branch is exercised
    for decision in decided:
        text = decision_sentence(decision)
        words = set(WORDS.findall(text.removeprefix(decision["answer"])))
        word = decision["decision"]
        assert word in words, text
        assert not (words & set(DECISIONS)) - {word}, text
        if decision["kind"] == "speedup" and word in ("better", "worse"):
            assert words == {word, "fewer" if word == "better" else "more"}, text
        else:
            assert words == {word}, text
        assert text.startswith(f"{decision['answer']}: {decision_words(decision)}, ")
        if decision["interval"] is not None:
            lo, hi = decision["interval"]
            if decision["kind"] == "speedup":  # symmetric on the log scale: both ends
                assert f" [{lo:.2f}, {hi:.2f}]" in text, text
            else:
                assert f" ± {(hi - lo) / 2:.1f}" in text, text
        if word == "equivalent":
            assert f"within ±{decision['margin']:.1f} points" in text
        if word == "undecided":
            assert text.endswith("; " + decision["would_decide"]), text
