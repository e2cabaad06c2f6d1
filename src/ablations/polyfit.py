"""polyfit: is a complex model chosen over a simpler one under k-fold cross-validation?

Notebook 001's question "Perform K-Fold CV on a sequence of models (polynomial regression on
synthetic data). Are the complex models chosen over the simpler models? Why / why not?" as one
reproducible stage (dvc.yaml's `polyfit`; its config is `config.PolyfitConfig`).

Data come from a KNOWN polynomial (``polyfit.coefficients``, increasing powers) plus Gaussian
noise, so the true degree is known.  Every degree 1..``max_degree`` is scored by shuffled,
seeded ``KFold`` cross-validation of a scikit-learn ``Pipeline``
(PolynomialFeatures -> StandardScaler -> LinearRegression).  Reported per degree: the CV MSE
mean, its fold-to-fold standard deviation and standard error (std / sqrt(k)); the degree chosen
by the minimum mean and by the one-standard-error rule.  The whole selection is repeated on
``draws`` independent data sets (seeds seed, seed+1, …): how often each rule chose each degree,
and the CV-error curve over draws (median, 10th-90th percentile, mean ± std), answer the
question; the verdict is computed from those frequencies, the first draw illustrating.  MLflow
gets one parent run ("polyfit") with one nested run per degree (experiment "polyfit").

Why plain least squares and not Ridge: after StandardScaler the monomial columns of degree 15
on [-3, 3] are strongly collinear (condition number ~2e5 for the default data), but that is far
from float64's limit (~1e16; error ~ cond * eps ~ 1e-11), and LinearRegression solves with an
SVD-based ``lstsq``, not the normal equations (which would square the condition number).  So
the fit is the exact OLS fit, and its large variance at high degree is exactly what the study
wants to show.  Even alpha=1e-8 is not "tiny" here: the smallest squared singular value is
~1e-8, so Ridge would visibly shrink that direction (predictions move by ~0.2) and blur the
answer.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ablations import tracking
from ablations.config import PolyfitConfig, polyfit_config
from ablations.io import atomic_file, write_json
from ablations.plots import plt  # pyplot with the file-only (Agg) backend

# --------------------------------------------------------------------------- study


@dataclass(frozen=True)
class DegreeScore:
    """Cross-validated test MSE of one polynomial degree (std over folds, SE = std/sqrt(k))."""

    degree: int
    mse_mean: float
    mse_std: float
    mse_se: float
    fold_mse: tuple[float, ...]
    train_mse_mean: float


def make_data(
    coefficients: Sequence[float],
    noise: float,
    n: int,
    x_range: tuple[float, float],
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """x ~ U(x_range), shape (n, 1); y = sum_i c_i x^i + N(0, noise^2), shape (n,)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(x_range[0], x_range[1], size=n)
    y = np.polynomial.polynomial.polyval(x, np.asarray(coefficients, dtype=float))
    y = y + rng.normal(0.0, noise, size=n)
    return x.reshape(-1, 1), y


def make_model(degree: int):
    """PolynomialFeatures -> StandardScaler -> LinearRegression (see module docstring: why OLS)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures, StandardScaler

    return Pipeline(
        [
            ("poly", PolynomialFeatures(degree=degree, include_bias=False)),
            ("scale", StandardScaler()),
            ("ols", LinearRegression()),
        ]
    )


def cv_errors(
    x: np.ndarray, y: np.ndarray, degrees: Iterable[int], folds: int, seed: int
) -> list[DegreeScore]:
    """Score each degree with the SAME shuffled, seeded k folds (paired comparison). A plain
    loop over KFold's splits, not cross_validate: its per-call cloning and scorer overhead was
    most of the time of these tiny fits, which run `draws` x max_degree x folds times."""
    from sklearn.model_selection import KFold

    splits = list(KFold(n_splits=folds, shuffle=True, random_state=seed).split(x))
    scores = []
    for degree in degrees:
        test_mse, train_mse = [], []
        for train, test in splits:
            model = make_model(degree).fit(x[train], y[train])
            test_mse.append(float(np.mean((model.predict(x[test]) - y[test]) ** 2)))
            train_mse.append(float(np.mean((model.predict(x[train]) - y[train]) ** 2)))
        fold_mse = np.asarray(test_mse)
        std = float(np.std(fold_mse, ddof=1))  # sample std over the k folds
        scores.append(DegreeScore(degree=int(degree), mse_mean=float(np.mean(fold_mse)),
                                  mse_std=std, mse_se=std / math.sqrt(folds),
                                  fold_mse=tuple(test_mse), train_mse_mean=float(np.mean(train_mse))))
    return scores


def choose_degree(scores: Sequence[DegreeScore]) -> tuple[int, int]:
    """(degree with the minimum mean CV MSE, smallest degree with mean <= min + SE(min))."""
    best = min(scores, key=lambda s: s.mse_mean)
    threshold = best.mse_mean + best.mse_se
    one_se = min(s.degree for s in scores if s.mse_mean <= threshold)
    return best.degree, one_se


# --------------------------------------------------------------------------- verdict


def _relation(degree: int, true_degree: int) -> str:
    if degree > true_degree:
        return f"above the true degree {true_degree}"
    if degree < true_degree:
        return f"below the true degree {true_degree}"
    return "the true degree"


def _training_sentence(by_degree: dict[int, DegreeScore], best: DegreeScore) -> str:
    """The largest degree's held-out error against its training error (the variance)."""
    top = by_degree[max(by_degree)]
    if top.degree == best.degree:
        return (f"The largest degree scored ({top.degree}) has the minimum CV MSE, so no model "
                "more complex than the chosen one was scored.")
    side = "lower" if top.train_mse_mean < best.train_mse_mean else "not lower"
    return (f"Degree {top.degree} has {top.mse_mean / best.mse_mean:.3g}x the minimum CV MSE "
            f"while its training MSE ({top.train_mse_mean:.3g}) is {side} than degree "
            f"{best.degree}'s ({best.train_mse_mean:.3g}).")


def answer(scores: Sequence[DegreeScore], true_degree: int, noise: float | None = None) -> str:
    """What one data draw shows, from its numbers only: each rule's degree and where it lies
    relative to the truth, the truth's distance from the minimum in standard errors, the
    largest degree's held-out vs training error."""
    by_degree = {s.degree: s for s in scores}
    min_degree, one_se = choose_degree(scores)
    best = by_degree[min_degree]
    parts = [
        f"The data come from a degree-{true_degree} polynomial; {len(best.fold_mse)}-fold CV "
        f"picks degree {min_degree} by minimum mean MSE ({best.mse_mean:.3g} +/- "
        f"{best.mse_se:.3g} SE), {_relation(min_degree, true_degree)}, and degree {one_se} by "
        f"the one-standard-error rule, {_relation(one_se, true_degree)}."]
    above = [rule for rule, degree in (("the minimum", min_degree), ("the 1-SE rule", one_se))
             if degree > true_degree]
    parts.append("In this draw a model more complex than the truth is chosen by "
                 + (" and ".join(above) if above else "neither rule") + ".")
    truth = by_degree.get(true_degree)
    if truth is not None and min_degree != true_degree and best.mse_se > 0:
        gap = truth.mse_mean - best.mse_mean
        parts.append(f"Degree {true_degree}'s mean CV MSE is {gap:.3g} above the minimum, "
                     f"{gap / best.mse_se:.2g} standard errors of the minimum.")
    if noise:
        parts.append(f"The minimum CV MSE is {best.mse_mean / noise**2:.3g}x the noise variance "
                     f"{noise**2:.3g}, the floor that no model can beat.")
    parts.append(_training_sentence(by_degree, best))
    return " ".join(parts)


# --------------------------------------------------------------------------- many draws


@dataclass(frozen=True)
class Draws:
    """The selection repeated on independent data sets: per draw, each degree's mean CV MSE
    (rows: draws, columns: degrees) and the degree each rule chose."""

    seeds: tuple[int, ...]
    degrees: tuple[int, ...]
    mse: np.ndarray
    chosen_min: tuple[int, ...]
    chosen_1se: tuple[int, ...]


def draw_scores(cfg: PolyfitConfig, seed: int) -> list[DegreeScore]:
    """One draw: its data and folds seeded with `seed`, every degree scored."""
    import sklearn

    # scikit-learn's checks of finite inputs and of parameters, off: the data are made here
    # (finite), the parameters written here. They were a quarter of polyfit's CPU time; the
    # fits and their bits are the same (docs/performance.md).
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        x, y = make_data(cfg.coefficients, cfg.noise, cfg.n, cfg.x_range, seed)
        return cv_errors(x, y, range(1, cfg.max_degree + 1), cfg.folds, seed)


def in_parallel(function: Callable, items: Sequence) -> list:
    """[function(item) for item in items], spread over this process's CPUs by forked worker
    processes (they inherit the imports: no start-up cost); in order, so the same list."""
    workers = min(len(items), len(os.sched_getaffinity(0)))
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [function(item) for item in items]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(function, items, chunksize=math.ceil(len(items) / workers)))


def repeat_selection(cfg: PolyfitConfig) -> tuple[list[DegreeScore], Draws]:
    """(the first draw's scores, all draws): data and folds of draw i seeded with seed + i.
    The draws are independent: they run in parallel (in_parallel)."""
    degrees = range(1, cfg.max_degree + 1)
    every = in_parallel(partial(draw_scores, cfg), range(cfg.seed, cfg.seed + cfg.draws))
    first = every[0]
    rows = [[s.mse_mean for s in scores] for scores in every]
    chosen = [choose_degree(scores) for scores in every]
    return first, Draws(seeds=tuple(range(cfg.seed, cfg.seed + cfg.draws)),
                        degrees=tuple(degrees), mse=np.array(rows),
                        chosen_min=tuple(c[0] for c in chosen),
                        chosen_1se=tuple(c[1] for c in chosen))


def frequencies(chosen: Sequence[int], degrees: Sequence[int]) -> dict[int, int]:
    """How many draws chose each degree (every degree listed, 0 included)."""
    return {d: sum(c == d for c in chosen) for d in degrees}


def wilson(count: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound at 0 and at `total`, unlike p ± z·se)."""
    from scipy.special import ndtri

    z = float(ndtri(0.5 + confidence / 2))
    p = count / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    low = 0.0 if count == 0 else max(0.0, centre - half)  # exact ends, not float residue
    return low, 1.0 if count == total else min(1.0, centre + half)


def rule_summary(chosen: Sequence[int], degrees: Sequence[int], true_degree: int) -> dict[str, Any]:
    """Counts above / at / below the truth, the share above with its interval, the mode."""
    counts = frequencies(chosen, degrees)
    above = sum(c > true_degree for c in chosen)
    low, high = wilson(above, len(chosen))
    mode = max(counts, key=lambda d: (counts[d], -d))  # ties: the simpler degree
    return {"frequency": {str(d): n for d, n in counts.items()}, "above": above,
            "at": counts.get(true_degree, 0), "below": sum(c < true_degree for c in chosen),
            "share_above": above / len(chosen), "share_above_ci": [low, high],
            "most_frequent": mode, "most_frequent_count": counts[mode]}


def _how_often(summary: dict[str, Any], total: int) -> str:
    low, high = summary["share_above_ci"]
    if summary["above"] == 0:
        return "in none of the draws"
    if summary["above"] == total:
        return "in every draw"
    if low > 0.5:
        return "in most draws"
    if high < 0.5:
        return "in a minority of draws"
    return "in about half of the draws (the interval includes 50%)"


def draws_answer(draws: Draws, true_degree: int) -> str:
    """The question answered from the frequencies of the chosen degrees over all draws."""
    total = len(draws.seeds)
    parts = [f"Over {total} data draws from a degree-{true_degree} polynomial,"]
    for rule, chosen in (("minimum", draws.chosen_min), ("one-standard-error", draws.chosen_1se)):
        if len(parts) > 1:
            parts.append("Over the same draws,")
        s = rule_summary(chosen, draws.degrees, true_degree)
        low, high = s["share_above_ci"]
        parts.append(
            f"the {rule} rule chose a degree above {true_degree} in {s['above']} of {total} "
            f"draws ({100 * s['share_above']:.0f}%, 95% interval {100 * low:.0f}-{100 * high:.0f}%), "
            f"degree {true_degree} in {s['at']} and a lower degree in {s['below']}; its most "
            f"frequent choice is degree {s['most_frequent']} ({s['most_frequent_count']} draws). "
            f"So under the {rule} rule a model more complex than the truth is chosen "
            f"{_how_often(s, total)}.")
    return " ".join(parts)


def curve_summary(draws: Draws) -> dict[str, dict[str, float]]:
    """Per degree: mean, std, median and 10th/90th percentiles of the mean CV MSE over draws
    (high degrees are heavy-tailed: the median and percentiles say more than mean ± std)."""
    out = {}
    for column, degree in enumerate(draws.degrees):
        values = draws.mse[:, column]
        q10, median, q90 = np.percentile(values, [10, 50, 90])
        out[str(degree)] = {"mean": float(values.mean()),
                            "std": float(values.std(ddof=1)) if values.size > 1 else None,
                            "median": float(median), "q10": float(q10), "q90": float(q90)}
    return out


# --------------------------------------------------------------------------- outputs


def plot_cv(scores: Sequence[DegreeScore], chosen: tuple[int, int], true_degree: int,
            path: Path | None = None, draws: Draws | None = None):
    """CV MSE (mean +/- 1 SE) vs degree of the first draw on a log scale; with several
    draws, also the CV MSE over draws and how often each rule chose each degree. Saved
    atomically as PNG if `path`."""
    many = draws is not None and len(draws.seeds) > 1
    fig, axes = plt.subplots(1, 3 if many else 1, figsize=(18, 4.5) if many else (7, 4.5),
                             squeeze=False)
    _plot_first_draw(axes[0][0], scores, chosen, true_degree)
    if many:
        _plot_over_draws(axes[0][1], draws, true_degree)
        _plot_frequencies(axes[0][2], draws, true_degree)
    fig.tight_layout()
    if path is not None:
        with atomic_file(Path(path), "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)
    return fig


def _plot_first_draw(ax, scores, chosen, true_degree) -> None:
    degrees = [s.degree for s in scores]
    by_degree = {s.degree: s for s in scores}
    min_degree, one_se = chosen
    ax.errorbar(degrees, [s.mse_mean for s in scores], yerr=[s.mse_se for s in scores],
                marker="o", capsize=3, label="CV test MSE (mean ± 1 SE over folds)")
    ax.plot(degrees, [s.train_mse_mean for s in scores], ls=":", color="grey",
            label="training MSE (mean over folds)")
    best = by_degree[min_degree]
    ax.axhline(best.mse_mean + best.mse_se, ls="--", lw=0.8, color="grey",
               label="1-SE threshold")
    ax.axvline(true_degree, color="green", ls="-.", lw=1, label=f"true degree {true_degree}")
    ax.plot([min_degree], [best.mse_mean], marker="*", ms=16, ls="none", color="red",
            label=f"minimum: degree {min_degree}")
    ax.plot([one_se], [by_degree[one_se].mse_mean], marker="s", ms=11, ls="none",
            mfc="none", mec="black", mew=2, label=f"1-SE rule: degree {one_se}")
    ax.set_yscale("log", nonpositive="clip")
    ax.set_xticks(degrees)
    ax.set(xlabel="polynomial degree", ylabel="mean squared error",
           title=f"first draw: {len(best.fold_mse)}-fold CV error vs degree")
    ax.legend(fontsize=8)


def _plot_over_draws(ax, draws: Draws, true_degree: int) -> None:
    q10, median, q90 = np.percentile(draws.mse, [10, 50, 90], axis=0)
    ax.fill_between(draws.degrees, q10, q90, alpha=0.25, label="10th-90th percentile")
    ax.plot(draws.degrees, median, marker="o", label="median")
    ax.plot(draws.degrees, draws.mse.mean(axis=0), ls="--", color="black", label="mean")
    ax.axvline(true_degree, color="green", ls="-.", lw=1, label=f"true degree {true_degree}")
    ax.set_yscale("log", nonpositive="clip")
    ax.set_xticks(draws.degrees)
    ax.set(xlabel="polynomial degree", ylabel="mean CV MSE of a draw",
           title=f"CV error over {len(draws.seeds)} data draws")
    ax.legend(fontsize=8)


def _plot_frequencies(ax, draws: Draws, true_degree: int) -> None:
    degrees = np.array(draws.degrees)
    for offset, label, chosen in ((-0.2, "minimum", draws.chosen_min),
                                  (0.2, "1-SE rule", draws.chosen_1se)):
        counts = frequencies(chosen, draws.degrees)
        ax.bar(degrees + offset, [counts[d] for d in draws.degrees], width=0.4, label=label)
    ax.axvline(true_degree, color="green", ls="-.", lw=1, label=f"true degree {true_degree}")
    ax.set_xticks(draws.degrees)
    ax.set(xlabel="chosen degree", ylabel="draws",
           title=f"degree chosen in each of {len(draws.seeds)} draws")
    ax.legend(fontsize=8)


def metrics_dict(scores: Sequence[DegreeScore], chosen: tuple[int, int], true_degree: int,
                 verdict: str, draws: Draws | None = None) -> dict[str, Any]:
    """The results file: numeric top-level keys, per-degree mean/std/se, the verdict."""
    by_degree = {s.degree: s for s in scores}
    return {
        "true_degree": true_degree,
        "chosen_degree_min": chosen[0],
        "chosen_degree_1se": chosen[1],
        "best_cv_mse": by_degree[chosen[0]].mse_mean,
        "per_degree": {
            str(s.degree): {"mean": s.mse_mean, "std": s.mse_std, "se": s.mse_se}
            for s in scores
        },
        "verdict": verdict,
        **({} if draws is None else {"draws": draws_dict(draws, true_degree)}),
    }


def draws_dict(draws: Draws, true_degree: int) -> dict[str, Any]:
    """Per rule: how often each degree was chosen; the CV MSE curve over draws."""
    return {"count": len(draws.seeds), "seeds": [draws.seeds[0], draws.seeds[-1]],
            "min_rule": rule_summary(draws.chosen_min, draws.degrees, true_degree),
            "one_se_rule": rule_summary(draws.chosen_1se, draws.degrees, true_degree),
            "cv_mse": curve_summary(draws)}


# --------------------------------------------------------------------------- MLflow (tracking.log_polyfit)


def draws_metrics(draws: Draws | None, true_degree: int) -> tuple[dict[str, float],
                                                                  dict[int, dict[str, float]]]:
    """MLflow metrics of the repeated selection: (parent's, {degree: that degree's run's})."""
    if draws is None:
        return {}, {}
    rules = {"min": rule_summary(draws.chosen_min, draws.degrees, true_degree),
             "1se": rule_summary(draws.chosen_1se, draws.degrees, true_degree)}
    parent = {"draws": len(draws.seeds), **{f"share_above_truth_{rule}": s["share_above"]
                                            for rule, s in rules.items()}}
    curve = curve_summary(draws)
    per_degree = {d: {"cv_mse_median_over_draws": curve[str(d)]["median"],
                      **{f"chosen_{rule}_draws": s["frequency"][str(d)] for rule, s in rules.items()}}
                  for d in draws.degrees}
    return parent, per_degree


# --------------------------------------------------------------------------- stage


def study_answer(scores: Sequence[DegreeScore], draws: Draws, cfg: PolyfitConfig) -> str:
    """Over many draws: the frequencies answer, the first draw illustrates; one draw: itself."""
    first = answer(scores, cfg.true_degree, noise=cfg.noise)
    if len(draws.seeds) == 1:
        return f"One data draw (seed {cfg.seed}), so no frequencies: " + first
    return draws_answer(draws, cfg.true_degree) + f" First draw (seed {cfg.seed}): " + first


def headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics: the degrees chosen. The per-degree table, the draws and the verdict are
    in the results file (as DVC metrics they would add ~50 table columns); the true degree
    follows from the params."""
    return {key: metrics[key] for key in ("chosen_degree_min", "chosen_degree_1se")}


def run(config: PolyfitConfig | dict, results_path: Path, metrics_path: Path, plot_path: Path
        ) -> dict[str, Any]:
    """The whole stage: validate, simulate, cross-validate, choose, plot, log, write results
    (metrics_dict) and DVC metrics (headline); returns the results."""
    cfg = polyfit_config(config)
    scores, draws = repeat_selection(cfg)
    chosen = choose_degree(scores)
    verdict = study_answer(scores, draws, cfg)
    metrics = metrics_dict(scores, chosen, cfg.true_degree, verdict, draws)
    figure = plot_cv(scores, chosen, cfg.true_degree, draws=draws)
    try:
        tracking.log_polyfit(cfg.model_dump(mode="json"), scores, chosen, verdict, figure,
                             *draws_metrics(draws, cfg.true_degree))
        with atomic_file(Path(plot_path), "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        write_json(Path(results_path), metrics)
        write_json(Path(metrics_path), headline(metrics))
    except BaseException:
        for path in (plot_path, results_path):  # no partial outputs for DVC to cache
            Path(path).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
    return metrics
