"""Sentences from numbers: each effect (ablations.effects) in plain words that cannot say more
than its interval does.

Rules, checked by property tests (tests/test_verdicts.py):
- "better"/"worse", "above"/"below", "larger"/"smaller" only when the 95% interval excludes 0,
  and their direction is the sign of the difference;
- one seed (no interval) or an interval covering 0: the number is given, the conclusion is
  that none is shown;
- a sentence names only the variants, levels or factors of the effect it describes;
- a speed-up ratio says "fewer"/"more" only when its interval excludes 1.
"""

from __future__ import annotations

from collections.abc import Callable
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


def main_effect_sentence(main: dict[str, Any], simple: list[dict[str, Any]]) -> str:
    """A factor level's main effect, then its effect within every setting of the others."""
    head = difference_sentence(f"{main['factor']} {main['level']} (averaged over the other "
                               "factors)", main["reference"], main)
    if not simple:
        return head
    parts = []
    for effect in simple:
        where = ", ".join(f"{factor}={level}" for factor, level in effect["within"].items())
        d, h = effect["difference"], effect["ci"]
        number = "—" if d is None else f"{d:+.1f}" + ("" if h is None else f" ± {h:.1f}")
        mark = ("better" if d > 0 else "worse") if shown(effect) else "not shown"
        parts.append(f"{where}: {number} ({mark})")
    return head + ". Within each setting: " + "; ".join(parts)


def _no_note(effect: dict[str, Any]) -> str:
    return ""


def factorial_verdicts(effects: dict[str, list[dict[str, Any]]],
                       note: Callable[[dict], str] = _no_note) -> list[str]:
    """One sentence per factor level (main + simple effects) and per interaction; `note(effect)`
    is appended to each (e.g. a convergence caveat)."""
    out = []
    for main in effects["main"]:
        simple = [s for s in effects["simple"]
                  if (s["factor"], s["level"]) == (main["factor"], main["level"])]
        out.append(main_effect_sentence(main, simple if len(simple) > 1 else []) + note(main))
    out += [interaction_sentence(effect) + note(effect) for effect in effects["interaction"]]
    return out


def pair_verdicts(pairs: list[dict[str, Any]], note: Callable[[dict], str] = _no_note) -> list[str]:
    return [difference_sentence(p["variant"], p["vs"], p) + note(p) for p in pairs]


def effect_rows(effects: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Flat rows (kind, label, difference, ci, n) for tables and forest plots."""
    return [{"kind": kind, "label": effect_label(e), "difference": e["difference"],
             "ci": e["ci"], "n": e["n"], "shown": shown(e)}
            for kind in ("main", "simple", "interaction", "pairs") for e in effects.get(kind, [])]


def ratio_sentence(ratio: dict[str, Any], unit: str) -> str:
    """A speed-up factor (without BN ÷ with BN, mean of per-seed ratios ± 95% interval) in
    words: "fewer"/"more" only when the interval excludes 1."""
    r, h, n = ratio["mean"], ratio["ci"], ratio["n"]
    if r is None:
        return f"{unit}: not measurable"
    number = f"{r:.2f}" + ("" if h is None else f" ± {h:.2f}")
    if h is None:
        return f"{unit}: ratio {number} from {_seeds(n)}, no interval, so no conclusion"
    if abs(r - 1) <= h:
        return f"{unit}: ratio {number} over {_seeds(n)}; the interval covers 1, so no speed-up is shown"
    word = "fewer" if r > 1 else "more"
    return f"{unit}: ratio {number} over {_seeds(n)}, {word} with BatchNorm"

