"""polyfit: is a complex model chosen over a simpler one under k-fold cross-validation?

Notebook 001's question "Perform K-Fold CV on a sequence of models (polynomial regression on
synthetic data). Are the complex models chosen over the simpler models? Why / why not?" as one
reproducible stage (dvc.yaml's `polyfit`; its config is `config.PolyfitConfig`).

Data come from a KNOWN polynomial (``polyfit.coefficients``, increasing powers) plus Gaussian
noise, so the true degree is known.  Every degree 1..``max_degree`` is scored by shuffled,
seeded ``KFold`` cross-validation of a scikit-learn ``Pipeline``
(PolynomialFeatures -> StandardScaler -> LinearRegression).  Reported per degree: the CV MSE
mean, its fold-to-fold standard deviation and standard error (std / sqrt(k)); the degree chosen
by the minimum mean and by the one-standard-error rule; and a verdict sentence computed from
those numbers.  MLflow gets one parent run ("polyfit") with one nested run per degree.

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

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    """Score each degree with the SAME shuffled, seeded k folds (paired comparison)."""
    from sklearn.model_selection import KFold, cross_validate

    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = []
    for degree in degrees:
        result = cross_validate(
            make_model(degree), x, y, cv=splitter,
            scoring="neg_mean_squared_error", return_train_score=True,
        )
        fold_mse = -np.asarray(result["test_score"], dtype=float)
        std = float(np.std(fold_mse, ddof=1))  # sample std over the k folds
        scores.append(
            DegreeScore(
                degree=int(degree),
                mse_mean=float(np.mean(fold_mse)),
                mse_std=std,
                mse_se=std / math.sqrt(folds),
                fold_mse=tuple(float(v) for v in fold_mse),
                train_mse_mean=float(-np.mean(result["train_score"])),
            )
        )
    return scores


def choose_degree(scores: Sequence[DegreeScore]) -> tuple[int, int]:
    """(degree with the minimum mean CV MSE, smallest degree with mean <= min + SE(min))."""
    best = min(scores, key=lambda s: s.mse_mean)
    threshold = best.mse_mean + best.mse_se
    one_se = min(s.degree for s in scores if s.mse_mean <= threshold)
    return best.degree, one_se


# --------------------------------------------------------------------------- verdict


def _complexity_sentence(by_degree: dict[int, DegreeScore], best: DegreeScore) -> str:
    top = by_degree[max(by_degree)]
    above = [s for s in by_degree.values() if s.degree > best.degree]
    if not above:
        return (
            f"The largest degree scored ({top.degree}) is also the best, so no model more "
            "complex than the chosen one was tried."
        )
    worst = max(above, key=lambda s: s.mse_mean)
    worst_note = (
        "" if worst is top
        else f"; the worst is degree {worst.degree} at {worst.mse_mean / best.mse_mean:.3g}x"
    )
    return (
        f"Higher degrees are worse on held-out folds: degree {top.degree} has CV MSE "
        f"{top.mse_mean:.3g} ({top.mse_mean / best.mse_mean:.3g}x the best{worst_note}) "
        f"although its training MSE "
        f"({top.train_mse_mean:.3g}) is lower than the best model's ({best.train_mse_mean:.3g}). "
        "The extra terms fit the noise of the training folds, and CV scores every model on data "
        "it did not see, so that variance shows up as error and overly complex models are not "
        "chosen."
    )


def _choice_sentence(by_degree: dict[int, DegreeScore], best: DegreeScore, one_se: int,
                     true_degree: int) -> str:
    if best.degree > true_degree:
        truth = by_degree.get(true_degree)
        gap = (
            f" (degree {true_degree}'s mean is only {truth.mse_mean - best.mse_mean:.3g} higher, "
            f"against a standard error of {best.mse_se:.3g})" if truth else ""
        )
        return (
            f"The minimum lands on degree {best.degree}, slightly above the truth, because its "
            f"unneeded terms cost less than the fold-to-fold noise{gap}; the one-standard-error "
            f"rule corrects for that and picks the simplest adequate model, degree {one_se}."
        )
    if best.degree == true_degree and one_se == true_degree:
        return "Both the minimum and the one-standard-error rule recover the true degree."
    return (
        f"Degree {one_se} (one-standard-error rule) is below the truth: with this noise and "
        f"sample size the higher-order terms of the true polynomial are too small to detect."
    )


def answer(scores: Sequence[DegreeScore], true_degree: int, noise: float | None = None) -> str:
    """Answer the notebook's question from the numbers (not a hand-written conclusion)."""
    by_degree = {s.degree: s for s in scores}
    min_degree, one_se = choose_degree(scores)
    best = by_degree[min_degree]
    complex_chosen = one_se > true_degree
    parts = [
        f"{'Yes' if complex_chosen else 'No'}: the data come from a degree-{true_degree} "
        f"polynomial; {len(best.fold_mse)}-fold CV picks degree {min_degree} by minimum mean MSE "
        f"({best.mse_mean:.3g} +/- {best.mse_se:.3g} SE) and degree {one_se} by the "
        "one-standard-error rule."
    ]
    if noise:
        parts.append(
            f"The best CV MSE is {best.mse_mean / noise**2:.3g}x the noise variance "
            f"{noise**2:.3g}, the floor that no model can beat."
        )
    simpler = by_degree.get(true_degree - 1)
    if simpler is not None:
        parts.append(
            f"Too simple a model underfits: degree {simpler.degree} has "
            f"{simpler.mse_mean / best.mse_mean:.3g}x the best CV MSE (bias)."
        )
    parts.append(_complexity_sentence(by_degree, best))
    parts.append(_choice_sentence(by_degree, best, one_se, true_degree))
    return " ".join(parts)


# --------------------------------------------------------------------------- outputs


def plot_cv(scores: Sequence[DegreeScore], chosen: tuple[int, int], true_degree: int,
            path: Path | None = None):
    """CV MSE (mean +/- 1 SE) vs degree on a log scale; saved atomically as PNG if `path`."""
    degrees = [s.degree for s in scores]
    means = np.array([s.mse_mean for s in scores])
    by_degree = {s.degree: s for s in scores}
    min_degree, one_se = chosen
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(degrees, means, yerr=[s.mse_se for s in scores], marker="o", capsize=3,
                label="CV test MSE (mean ± 1 SE over folds)")
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
           title=f"{len(best.fold_mse)}-fold CV error vs polynomial degree")
    ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        with atomic_file(Path(path), "wb") as handle:
            fig.savefig(handle, format="png", dpi=120)
    return fig


def metrics_dict(scores: Sequence[DegreeScore], chosen: tuple[int, int], true_degree: int,
                 verdict: str) -> dict[str, Any]:
    """The DVC metrics file: numeric top-level keys, per-degree mean/std/se, the verdict."""
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
    }


# --------------------------------------------------------------------------- MLflow


def _param_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _log_degree_runs(scores: Sequence[DegreeScore]) -> None:
    import mlflow

    for s in scores:
        with mlflow.start_run(run_name=f"degree-{s.degree}", nested=True):
            mlflow.set_tag("study", "polyfit")
            mlflow.log_param("degree", s.degree)
            mlflow.log_metrics({"cv_mse_mean": s.mse_mean, "cv_mse_std": s.mse_std,
                                "cv_mse_se": s.mse_se, "train_mse_mean": s.train_mse_mean})
            for fold, value in enumerate(s.fold_mse):
                mlflow.log_metric("cv_mse_fold", value, step=fold)


def log_to_mlflow(config: dict, scores: Sequence[DegreeScore], chosen: tuple[int, int],
                  verdict: str, figure) -> str:
    """One parent run "polyfit" + one nested run per degree; returns the parent's run id.

    The caller sets the tracking URI and experiment.  Under `mlflow run` (MLFLOW_RUN_ID set)
    the parent becomes a child of that run instead of resuming it (MLflow would otherwise
    resume it and overwrite its params); inside an active run it nests under that run.  An
    exception inside the `with` blocks ends the runs as FAILED (ActiveRun.__exit__).
    """
    import mlflow

    outer_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        true_degree = len(config["coefficients"]) - 1
        best = min(scores, key=lambda s: s.mse_mean)
        if mlflow.active_run() is not None:  # called inside a run: nest under it
            outer = {"nested": True}
        else:
            outer = {"parent_run_id": outer_run_id}
        with mlflow.start_run(run_name="polyfit", tags={"study": "polyfit"}, **outer) as parent:
            mlflow.log_params({key: _param_value(value) for key, value in config.items()})
            mlflow.log_metrics({"chosen_degree_min": chosen[0], "chosen_degree_1se": chosen[1],
                                "true_degree": true_degree, "best_cv_mse": best.mse_mean})
            mlflow.log_figure(figure, "cv_error.png")
            mlflow.log_text(verdict, "verdict.txt")
            _log_degree_runs(scores)
            return parent.info.run_id
    finally:
        if outer_run_id is not None:
            os.environ["MLFLOW_RUN_ID"] = outer_run_id


# --------------------------------------------------------------------------- stage


def run(config: PolyfitConfig | dict, metrics_path: Path, plot_path: Path) -> dict[str, Any]:
    """The whole stage: validate, simulate, cross-validate, choose, plot, log, write metrics."""
    cfg = polyfit_config(config)
    x, y = make_data(cfg.coefficients, cfg.noise, cfg.n, cfg.x_range, cfg.seed)
    scores = cv_errors(x, y, range(1, cfg.max_degree + 1), cfg.folds, cfg.seed)
    chosen = choose_degree(scores)
    verdict = answer(scores, cfg.true_degree, noise=cfg.noise)
    metrics = metrics_dict(scores, chosen, cfg.true_degree, verdict)
    figure = plot_cv(scores, chosen, cfg.true_degree)
    try:
        log_to_mlflow(cfg.model_dump(mode="json"), scores, chosen, verdict, figure)
        with atomic_file(Path(plot_path), "wb") as handle:
            figure.savefig(handle, format="png", dpi=120)
        write_json(Path(metrics_path), metrics)
    except BaseException:
        Path(plot_path).unlink(missing_ok=True)  # no partial outputs for DVC to cache
        raise
    finally:
        plt.close(figure)
    return metrics
