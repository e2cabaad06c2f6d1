"""Property tests: the words of a verdict never say more than its numbers (seeded random
loops over synthetic effects; hypothesis is not a dependency)."""

import random
import re

from ablations.verdicts import (difference_sentence, factorial_verdicts, interaction_sentence,
                                shown)

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


def test_factorial_verdict_marks_each_setting_by_its_own_interval():
    """In "Within each setting: a, b: +x ± y (better)" every mark follows that setting's own
    interval, whatever the average says."""
    rng = random.Random(18)
    for _ in range(300):
        names = random_names(rng, 6)
        main = {"factor": names[0], "level": names[1], "reference": names[2], **random_effect(rng)}
        simple = [{"factor": names[0], "level": names[1], "reference": names[2],
                   "within": {names[3]: names[4 + i]}, **random_effect(rng)} for i in range(2)]
        (text,) = factorial_verdicts({"main": [main], "simple": simple, "interaction": []})
        head, _, within = text.partition(". Within each setting: ")
        check_words(head, main)
        for part, effect in zip(within.split("; "), simple):
            assert part.startswith(f"{names[3]}={names[4 + simple.index(effect)]}: ")
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


def test_speedup_ratio_says_fewer_or_more_only_when_the_interval_excludes_1():
    from ablations.verdicts import ratio_sentence

    rng = random.Random(19)
    for _ in range(CASES):
        effect = random_effect(rng)  # a difference from 1
        mean = None if effect["difference"] is None else 1 + effect["difference"] / 40
        ci = None if effect["ci"] is None else effect["ci"] / 40
        text = ratio_sentence({"mean": mean, "ci": ci, "n": effect["n"]}, "steps")
        words = set(re.findall(r"\b(fewer|more|faster|slower)\b", text))
        if mean is None or ci is None or abs(mean - 1) <= ci:
            assert not words, text
        else:
            assert words == ({"fewer"} if mean > 1 else {"more"}), text

