"""Sentences from numbers: each effect (ablations.effects) in plain words that cannot say more
than its interval does.

Rules, checked by property tests (tests/test_verdicts.py):
- "better"/"worse", "above"/"below", "larger"/"smaller" only when the 95% interval excludes 0,
  and their direction is the sign of the difference;
- one seed (no interval) or an interval covering 0: the number is given, the conclusion is
  that none is shown;
- a sentence names only the variants, levels or factors of the effect it describes;
- a decision's sentence (ablations.decisions) carries its decision word and no other: "better"
  / "worse" / "fewer" / "more" only for that decision and side, "equivalent" only for
  equivalent, "undecided" with what would decide it.
"""

from __future__ import annotations

from typing import Any

from ablations.effects import effect_label

UNIT = "points of test accuracy"


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def shown(effect: dict[str, Any]) -> bool:
    """Whether the interval excludes 0 (a difference is shown)."""
    d, h = effect["difference"], effect["ci"]
    return d is not None and h is not None and abs(d) > h


def _inconclusive(subject: str, effect: dict[str, Any]) -> str | None:
    """The sentence when no direction may be stated, else None."""
    d, h, n = effect["difference"], effect["ci"], effect["n"]
    if d is None:
        return f"{subject}: no seed has a finite result in every variant it needs"
    if h is None:
        return f"{subject}: {d:+.1f} {UNIT} from {_seeds(n)}, no interval, so no conclusion"
    if abs(d) <= h:
        return (f"{subject}: {d:+.1f} ± {h:.1f} {UNIT} over {_seeds(n)}; the interval covers 0, "
                "so no difference is shown")
    return None


def _left_out(effect: dict[str, Any]) -> str:
    """Seeds left out because a run it needs has no finite result (diverged)."""
    excluded = effect.get("excluded", 0)
    return f" ({excluded} seed{'s' if excluded != 1 else ''} left out: a run diverged)" \
        if excluded else ""


def difference_sentence(subject: str, reference: str, effect: dict[str, Any]) -> str:
    """`subject` against `reference`: "relu-bn is 2.9 ± 0.8 points of test accuracy above relu
    (3 seeds): better"."""
    vague = _inconclusive(f"{subject} vs {reference}", effect)
    if vague:
        return vague + _left_out(effect)
    d, h = effect["difference"], effect["ci"]
    side, word = ("above", "better") if d > 0 else ("below", "worse")
    return (f"{subject} is {abs(d):.1f} ± {h:.1f} {UNIT} {side} {reference} "
            f"({_seeds(effect['n'])}): {word}" + _left_out(effect))


def interaction_sentence(effect: dict[str, Any]) -> str:
    """Do the two levels' effects add up? (interaction = how much the first factor's effect
    changes when the second moves off its reference level)."""
    (f1, f2), (l1, l2), (r1, r2) = effect["factors"], effect["levels"], effect["references"]
    subject = f"{f1} {l1} × {f2} {l2} (interaction)"
    vague = _inconclusive(subject, effect)
    if vague:
        if effect["ci"] is not None and effect["difference"] is not None:
            return vague + f": consistent with {l1} and {l2} adding up"
        return vague
    d, h = effect["difference"], effect["ci"]
    size = "larger" if d > 0 else "smaller"
    return (f"{subject}: {f1} {l1}'s effect (vs {r1}) is {abs(d):.1f} ± {h:.1f} {UNIT} {size} "
            f"with {f2} {l2} than with {r2} ({_seeds(effect['n'])}): they do not simply add up")


def settings_text(simple: list[dict[str, Any]]) -> str:
    """Effects within each setting of the other factors: "a=x: +2.1 ± 0.9 (better); a=y: …",
    each mark following that setting's own interval."""
    parts = []
    for effect in simple:
        where = ", ".join(f"{factor}={level}" for factor, level in effect["within"].items())
        d, h = effect["difference"], effect["ci"]
        number = "—" if d is None else f"{d:+.1f}" + ("" if h is None else f" ± {h:.1f}")
        mark = ("better" if d > 0 else "worse") if shown(effect) else "not shown"
        parts.append(f"{where}: {number} ({mark})")
    return "; ".join(parts)


def effect_rows(effects: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Flat rows (kind, label, difference, ci, n) for tables and forest plots."""
    return [{"kind": kind, "label": effect_label(e), "difference": e["difference"],
             "ci": e["ci"], "n": e["n"], "shown": shown(e)}
            for kind in ("main", "simple", "interaction", "pairs") for e in effects.get(kind, [])]


# --------------------------------------------------------------------------- decisions


def interval_text(decision: dict[str, Any]) -> str:
    """"+3.1 ± 1.9 points", the ± the half-width of the decision's interval (symmetric: a
    t-interval); a ratio "ratio 1.45 [1.20, 1.75]" (its interval is symmetric on the log
    scale, not on the ratio's); "—" without a finite value."""
    d, interval = decision["difference"], decision["interval"]
    if d is None:
        return "—"
    if decision["kind"] == "speedup":
        return f"ratio {d:.2f}" + ("" if interval is None
                                   else f" [{interval[0]:.2f}, {interval[1]:.2f}]")
    half = None if interval is None else (interval[1] - interval[0]) / 2
    return f"{d:+.1f}" + ("" if half is None else f" ± {half:.1f}") + " points"


def decision_words(decision: dict[str, Any]) -> str:
    """The decision in words: "better", "better, by less than the ±1.0-point margin",
    "equivalent within ±1.0 points", "undecided"; a speed-up (steps without ÷ with BN):
    "better: fewer with BatchNorm"."""
    word = decision["decision"]
    if decision["kind"] == "speedup" and word in ("better", "worse"):
        return word + (": fewer" if word == "better" else ": more") + " with BatchNorm"
    if word in ("better", "worse") and decision["inside_margin"]:
        return f"{word}, by less than the ±{decision['margin']:.1f}-point margin"
    if word == "equivalent":
        return f"equivalent within ±{decision['margin']:.1f} points"
    return word


def decision_sentence(decision: dict[str, Any]) -> str:
    """One headline line: "norm bn − none: better, +3.1 ± 1.9 points (3 seeds)"; undecided
    adds what would decide it."""
    text = (f"{decision['answer']}: {decision_words(decision)}, {interval_text(decision)} "
            f"({_seeds(decision['seeds'])})")
    if decision["decision"] == "undecided" and decision.get("would_decide"):
        text += f"; {decision['would_decide']}"
    return text


def within_settings_sentence(main: dict[str, Any], simple: list[dict[str, Any]]) -> str:
    """A main effect's detail: its effect within every setting of the other factors, each with
    its own 95% interval (not adjusted for the study's other effects)."""
    return (f"{effect_label(main)}, within each setting (95% intervals, each on its own): "
            + settings_text(simple))
