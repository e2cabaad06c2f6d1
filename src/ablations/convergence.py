"""Was training still improving when it stopped? An answer that rests on such a variant may
change with more epochs, and the report says so.

The test: the least-squares slope of validation accuracy over the last LAST evaluations, in
percentage points per epoch, averaged over seeds; above IMPROVING the variant is flagged.
Evaluations may be several per epoch (history rows with fractional epochs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ablations import stats

LAST = 3  # evaluations the end-of-training slope is fitted over
# Points of validation accuracy per epoch. Below it, more epochs would change a test accuracy
# by less than the seed-to-seed spread of these studies (about 1 point); above it, a
# difference between variants could still open or close.
IMPROVING = 0.5


def end_slope(history: list[dict[str, float]], last: int = LAST) -> float | None:
    """Slope of val_accuracy (points per epoch) over the last `last` evaluations; None with
    fewer than two finite ones (a diverged run)."""
    rows = [r for r in history[-last:] if np.isfinite(r.get("val_accuracy", np.nan))]
    if len(rows) < 2:
        return None
    epochs = np.array([r["epoch"] for r in rows], dtype=float)
    accuracy = 100 * np.array([r["val_accuracy"] for r in rows])
    return float(np.polyfit(epochs, accuracy, 1)[0])


def convergence(histories: list[list[dict[str, float]]]) -> dict[str, Any]:
    """Per variant: the slope over seeds (a stats.summary) and whether it is still improving."""
    slope = stats.summary([end_slope(h) for h in histories])
    improving = slope["mean"] is not None and slope["mean"] > IMPROVING
    return {"end_slope_points_per_epoch": slope, "still_improving": improving,
            "evaluations": LAST, "threshold_points_per_epoch": IMPROVING}


def unconverged(variants: list[str], flags: dict[str, dict[str, Any]]) -> list[str]:
    """The variants among `variants` whose training was still improving at its end."""
    return [name for name in variants if flags.get(name, {}).get("still_improving")]


def caveat(variants: list[str], flags: dict[str, dict[str, Any]]) -> str:
    """" (may change with more epochs: a, b still improving at the end)" or ""."""
    names = unconverged(variants, flags)
    if not names:
        return ""
    if len(names) == len(variants) > 2:  # a factorial average: naming all 8 says nothing more
        return (f" (may change with more epochs: all {len(names)} variants it rests on were "
                "still improving at the end)")
    return f" (may change with more epochs: {', '.join(names)} still improving at the end)"


def budget_sentence(images: int, epochs: list[int], seeds: int | str,
                    note: str | None = None) -> str:
    """What every answer of a study rests on; `seeds` a count or a range's words ("2-4"),
    `note` the budget's own words (config.Study.budget_note)."""
    span = str(epochs[0]) if len(set(epochs)) == 1 else f"{min(epochs)}-{max(epochs)}"
    plural = "s" if seeds != 1 else ""
    return (f"These answers rest on {images} training images, {span} epochs and "
            f"{seeds} seed{plural} per variant" + (f"; {note}." if note else "."))
