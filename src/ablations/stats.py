"""Mean ± confidence interval over seeds (differences between variants: ablations.effects,
their wording: ablations.verdicts).

    python -c "from ablations.stats import mean_ci; print(mean_ci([0.91, 0.90, 0.93]))"

Every variant of a study is trained once per seed; a result is the mean over seeds with the
half-width of its Student-t confidence interval (few seeds: the t quantile, not 1.96, is what
makes 3 seeds honest). Non-finite values (a diverged run's NaN loss) are left out of the mean
and counted, so a reader sees "2 of 3 seeds" instead of a silently smaller sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
# Student t's inverse CDF, what scipy.stats' t.ppf calls, without importing scipy.stats.
from scipy.special import stdtrit

CONFIDENCE = 0.95


def finite(values: Iterable[float | None]) -> tuple[np.ndarray, int]:
    """(the finite values as floats, how many were None/NaN/inf and left out)."""
    raw = np.array([np.nan if v is None else v for v in values], dtype=float)
    kept = raw[np.isfinite(raw)]
    return kept, int(raw.size - kept.size)


def _t(confidence: float, df: float) -> float:
    """Two-sided Student-t quantile: half-width = t * standard error."""
    return float(stdtrit(df, 0.5 + confidence / 2))


def mean_ci(values: Iterable[float | None], confidence: float = CONFIDENCE
            ) -> tuple[float | None, float | None]:
    """(mean, half-width of the t-interval) of the finite values; NaN/None are left out.

    One finite value: (value, None), there is no spread to estimate. None at all: (None, None).
    """
    kept, _ = finite(values)
    if kept.size == 0:
        return None, None
    mean = float(kept.mean())
    if kept.size == 1:
        return mean, None
    se = float(kept.std(ddof=1)) / math.sqrt(kept.size)
    return mean, _t(confidence, kept.size - 1) * se


def summary(values: Iterable[float | None], labels: Iterable[str] | None = None,
            confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The JSON form of a result over seeds: mean, ci (half-width), n (finite values used),
    excluded (non-finite values left out) and the values themselves, keyed by `labels`."""
    values = list(values)
    mean, half = mean_ci(values, confidence)
    kept, excluded = finite(values)
    clean = [None if v is None or not math.isfinite(v) else float(v) for v in values]
    out: dict[str, Any] = {"mean": mean, "ci": half, "n": int(kept.size), "excluded": excluded}
    out["values"] = dict(zip(labels, clean)) if labels is not None else clean
    return out


def judge(diff: float | None, half: float | None, higher_is_better: bool = True) -> str | None:
    """'better', 'worse' or 'not distinguishable' (the interval contains 0); None without an
    interval (one seed) or without a difference (no finite value)."""
    if diff is None or half is None:
        return None
    if abs(diff) <= half:
        return "not distinguishable"
    return "better" if (diff > 0) == higher_is_better else "worse"


def format_result(result: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """A `summary` as text: "91.2 ± 0.5", "91.2" with one value, "—" without any."""
    if not result or result.get("mean") is None:
        return "—"
    text = f"{result['mean'] * scale:.{digits}f}"
    return text + (f" ± {result['ci'] * scale:.{digits}f}" if result.get("ci") is not None else "")
