"""polyfit: k-fold CV over polynomial degrees recovers the truth; outputs and MLflow runs."""

import json
import math
import re

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.model_selection import KFold, cross_val_score

from ablations import polyfit
from ablations.config import polyfit_config, read_yaml
from ablations.errors import ConfigError
from ablations.polyfit import DegreeScore
from conftest import REPO, copy_store

# The study as params.yaml sets it (its one home).
DEFAULT_CONFIG = read_yaml(REPO / "params.yaml")["polyfit"]

QUADRATIC = [0.5, 1.0, -1.5]
CUBIC = [1.0, -2.0, 0.5, 0.3]


def small_config(**overrides):
    """The default study shrunk so a full run (CV + MLflow) takes about a second."""
    config = {**DEFAULT_CONFIG, "n": 60, "max_degree": 5, "folds": 5, "seed": 3, "draws": 3}
    config.update(overrides)
    return config


@pytest.fixture
def tracking(tmp_path, monkeypatch, migrated_store):
    """A real MLflow SQLite store in tmp_path; global MLflow state restored afterwards."""
    uri = copy_store(migrated_store, tmp_path)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.set_experiment("polyfit").experiment_id
    yield MlflowClient(uri), experiment_id
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _runs(client, experiment_id):
    return client.search_runs([experiment_id], max_results=1000)


# --------------------------------------------------------------------------- the study


@pytest.mark.parametrize("coefficients", [QUADRATIC, CUBIC], ids=["quadratic", "cubic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cv_recovers_true_degree(coefficients, seed):
    true_degree = len(coefficients) - 1
    x, y = polyfit.make_data(coefficients, noise=1.0, n=100, x_range=(-3, 3), seed=seed)
    scores = polyfit.cv_errors(x, y, range(1, 9), folds=5, seed=seed)
    min_degree, one_se = polyfit.choose_degree(scores)
    assert one_se == true_degree
    assert true_degree <= min_degree <= true_degree + 2


def test_make_data_shapes_and_truth():
    x, y = polyfit.make_data(CUBIC, noise=0.0, n=50, x_range=(-2, 1), seed=0)
    assert x.shape == (50, 1) and y.shape == (50,)
    assert x.min() >= -2 and x.max() <= 1
    xs = x[:, 0]
    np.testing.assert_allclose(y, 1.0 - 2.0 * xs + 0.5 * xs**2 + 0.3 * xs**3)


def test_scores_are_deterministic_and_consistent():
    x, y = polyfit.make_data(CUBIC, 1.0, 60, (-3, 3), seed=7)
    first = polyfit.cv_errors(x, y, [1, 3, 6], folds=4, seed=7)
    again = polyfit.cv_errors(*polyfit.make_data(CUBIC, 1.0, 60, (-3, 3), seed=7), [1, 3, 6], 4, 7)
    assert first == again
    for score in first:
        assert len(score.fold_mse) == 4
        assert score.mse_mean == pytest.approx(np.mean(score.fold_mse))
        assert score.mse_std == pytest.approx(np.std(score.fold_mse, ddof=1))
        assert score.mse_se == pytest.approx(score.mse_std / 2)


def test_folds_are_shuffled_with_the_seed():
    x, y = polyfit.make_data(CUBIC, 1.0, 60, (-3, 3), seed=7)
    a = polyfit.cv_errors(x, y, [3], folds=5, seed=1)[0]
    b = polyfit.cv_errors(x, y, [3], folds=5, seed=2)[0]
    assert a.fold_mse != b.fold_mse
    assert a.mse_mean != b.mse_mean
    # On data sorted by x, unshuffled folds would be contiguous x ranges, so a degree-6 fit
    # would be scored on extrapolation (MSE in the hundreds); shuffled folds interpolate.
    order = np.argsort(x[:, 0])
    contiguous = -cross_val_score(polyfit.make_model(6), x[order], y[order], cv=KFold(5),
                                  scoring="neg_mean_squared_error").mean()
    shuffled = polyfit.cv_errors(x[order], y[order], [6], folds=5, seed=1)[0]
    assert shuffled.mse_mean < 2.0 < 50.0 < contiguous


def _score(degree, mean, se):
    return DegreeScore(degree, mean, se * math.sqrt(10), se, (mean,) * 10, mean)


def test_choose_degree_one_standard_error_rule():
    scores = [_score(1, 5.0, 0.5), _score(2, 1.15, 0.1), _score(3, 1.0, 0.2),
              _score(4, 1.3, 0.3)]
    assert polyfit.choose_degree(scores) == (3, 2)  # 1.15 <= 1.0 + 0.2
    scores[1] = _score(2, 1.25, 0.1)
    assert polyfit.choose_degree(scores) == (3, 3)


def test_answer_is_built_from_the_numbers():
    x, y = polyfit.make_data(CUBIC, 1.0, 60, (-3, 3), seed=3)
    scores = polyfit.cv_errors(x, y, range(1, 16), folds=10, seed=3)
    chosen = polyfit.choose_degree(scores)
    verdict = polyfit.answer(scores, 3, noise=1.0)
    assert chosen == (5, 3)  # the recommended default: minimum above truth, 1-SE = truth
    assert "degree-3 polynomial" in verdict
    assert "degree 5 by minimum mean MSE" in verdict and "above the true degree 3" in verdict
    assert "degree 3 by the one-standard-error rule, the true degree." in verdict
    assert "chosen by the minimum." in verdict
    gap = scores[2].mse_mean - scores[4].mse_mean
    assert f"{gap / scores[4].mse_se:.2g} standard errors" in verdict
    assert f"Degree 15 has {scores[-1].mse_mean / scores[4].mse_mean:.3g}x the minimum" in verdict


def random_scores(rng, max_degree):
    """Synthetic CV scores: any shape of curve, SEs from tiny to large."""
    return [_score(d, float(rng.uniform(0.5, 5) * rng.choice([1, 1, 100])), float(rng.uniform(0.001, 1)))
            for d in range(1, max_degree + 1)]


BANNED = re.compile(r"\b(only|slightly|correct\w*|Yes|No|better|worse)\b")


def test_one_draw_verdict_never_contradicts_its_numbers():
    """The issue's contradictions, over random curves: "Yes" then "not chosen", "slightly
    above" for any distance, a 1-SE pick below the truth called a correction, "only" for a
    gap of several standard errors."""
    rng = np.random.default_rng(16)
    for _ in range(500):
        max_degree = int(rng.integers(2, 16))
        true_degree = int(rng.integers(1, max_degree + 1))
        scores = random_scores(rng, max_degree)
        min_degree, one_se = polyfit.choose_degree(scores)
        text = polyfit.answer(scores, true_degree)
        assert not BANNED.search(text), text
        named = [int(d) for d in re.search(r"picks degree (\d+) by minimum.*, and degree (\d+) by "
                                           "the one-standard-error", text).groups()]
        assert named == [min_degree, one_se], text
        for rule, degree in (("minimum mean MSE", min_degree), ("one-standard-error rule", one_se)):
            where = re.search(re.escape(rule) + r"[^,]*, (above|below|the true degree)", text).group(1)
            expected = ("above" if degree > true_degree else "below" if degree < true_degree
                        else "the true degree")
            assert where == expected, text
        chosen_by = re.search(r"chosen by ([^.]*)\.", text).group(1)
        assert ("minimum" in chosen_by) == (min_degree > true_degree), text
        assert ("1-SE" in chosen_by) == (one_se > true_degree), text
        assert (chosen_by == "neither rule") == (max(min_degree, one_se) <= true_degree), text


def test_draws_verdict_follows_the_frequencies():
    rng = np.random.default_rng(17)
    for _ in range(300):
        degrees = tuple(range(1, int(rng.integers(3, 16)) + 1))
        true_degree = int(rng.choice(degrees))
        total = int(rng.integers(2, 60))
        spread = rng.dirichlet(np.ones(len(degrees)) * rng.uniform(0.05, 2))
        chosen = [tuple(int(c) for c in rng.choice(degrees, size=total, p=spread)) for _ in range(2)]
        draws = polyfit.Draws(seeds=tuple(range(total)), degrees=degrees,
                              mse=np.ones((total, len(degrees))), chosen_min=chosen[0],
                              chosen_1se=chosen[1])
        text = polyfit.draws_answer(draws, true_degree)
        assert not BANNED.search(text), text
        for rule, picks, sentence in zip(("minimum", "one-standard-error"), chosen,
                                         text.split("Over the same draws,")):
            above = sum(p > true_degree for p in picks)
            assert f"the {rule} rule chose a degree above {true_degree} in {above} of {total}" in sentence
            assert f"degree {true_degree} in {picks.count(true_degree)} and a lower degree in " \
                   f"{sum(p < true_degree for p in picks)};" in sentence
            counts = {d: picks.count(d) for d in degrees}
            mode = int(re.search(r"most frequent choice is degree (\d+) \((\d+)", sentence).group(1))
            assert counts[mode] == max(counts.values())
            low, high = polyfit.wilson(above, total)
            assert ("in most draws" in sentence) == (low > 0.5 and 0 < above < total), sentence
            assert ("in a minority" in sentence) == (high < 0.5 and above > 0), sentence
            assert ("in none of the draws" in sentence) == (above == 0)
            assert ("in every draw" in sentence) == (above == total)


def test_wilson_interval():
    assert polyfit.wilson(0, 50)[0] == 0.0 and polyfit.wilson(50, 50)[1] == 1.0
    low, high = polyfit.wilson(22, 50)  # the default run's minimum rule: 22 of 50 above truth
    assert low < 0.44 < high and (round(low, 3), round(high, 3)) == (0.312, 0.577)


def test_repeated_selection_counts_every_draw():
    cfg = polyfit_config(small_config(draws=4))
    first, draws = polyfit.repeat_selection(cfg)
    assert draws.seeds == (3, 4, 5, 6) and draws.mse.shape == (4, 5)
    x, y = polyfit.make_data(cfg.coefficients, cfg.noise, cfg.n, cfg.x_range, 3)
    assert [s.mse_mean for s in first] == [s.mse_mean for s in polyfit.cv_errors(x, y, range(1, 6), 5, 3)]
    assert list(draws.mse[0]) == [s.mse_mean for s in first]
    summary = polyfit.draws_dict(draws, 3)
    for rule in ("min_rule", "one_se_rule"):
        assert sum(summary[rule]["frequency"].values()) == 4
    assert summary["cv_mse"]["5"]["median"] == pytest.approx(float(np.median(draws.mse[:, 4])))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"folds": 1}, "polyfit.folds: must be >= 2"),
        ({"n": 3}, "polyfit.n: must be >= polyfit.folds"),
        ({"noise": -0.1}, "polyfit.noise: must be >= 0"),
        ({"max_degree": 0}, "polyfit.max_degree: must be >= 1"),
        ({"max_degree": 2}, "polyfit.max_degree: must be >= the true degree"),
        ({"folds": "10"}, "polyfit.folds: must be a whole number"),
        ({"seed": True}, "polyfit.seed"),
        ({"x_range": [3.0, -3.0]}, "polyfit.x_range"),
        ({"coefficients": [1.0, 0.0]}, "polyfit.coefficients"),
        ({"degree": 3}, "polyfit.degree: unknown key"),
    ],
)
def test_config_errors_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        polyfit_config({**DEFAULT_CONFIG, **override})


def test_config_missing_key_and_non_mapping():
    config = dict(DEFAULT_CONFIG)
    del config["folds"]
    with pytest.raises(ConfigError, match=r"polyfit\.folds: required key is missing"):
        polyfit_config(config)
    with pytest.raises(ConfigError, match="polyfit: must be a mapping"):
        polyfit_config([1, 2])


def test_default_config_is_valid():
    cfg = polyfit_config(DEFAULT_CONFIG)
    assert cfg.true_degree == 3 and cfg.max_degree == 15


# --------------------------------------------------------------------------- run + MLflow


def test_run_writes_outputs_and_logs_nested_runs(tmp_path, tracking):
    client, experiment_id = tracking
    metrics_path, plot_path = tmp_path / "metrics/polyfit.json", tmp_path / "plots/p/cv.png"
    results_path = tmp_path / "results/polyfit.json"
    metrics = polyfit.run(small_config(), results_path, metrics_path, plot_path)

    written = json.loads(results_path.read_text())
    assert written == metrics
    assert json.loads(metrics_path.read_text()) == {  # DVC's table: two numbers, no text
        "chosen_degree_min": metrics["chosen_degree_min"], "chosen_degree_1se": 3}
    assert written["true_degree"] == 3 and written["chosen_degree_1se"] == 3
    assert set(written["per_degree"]) == {"1", "2", "3", "4", "5"}
    assert set(written["per_degree"]["3"]) == {"mean", "std", "se"}
    assert written["draws"]["count"] == 3 and written["draws"]["seeds"] == [3, 5]
    assert written["verdict"].startswith("Over 3 data draws from a degree-3 polynomial")
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob("*.tmp"))

    runs = _runs(client, experiment_id)
    parents = [r for r in runs if r.info.run_name == "polyfit"]
    assert len(parents) == 1 and len(runs) == 6
    parent = parents[0]
    assert parent.data.tags["study"] == "polyfit"
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.params["folds"] == "5" and parent.data.params["x_range"] == "[-3.0, 3.0]"
    assert parent.data.metrics["chosen_degree_1se"] == 3
    assert parent.data.metrics["best_cv_mse"] == pytest.approx(metrics["best_cv_mse"])
    assert parent.data.metrics["draws"] == 3
    assert parent.data.metrics["share_above_truth_1se"] == metrics["draws"]["one_se_rule"]["share_above"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"cv_error.png", "verdict.txt"} <= artifacts
    children = [r for r in runs if r is not parent]
    assert sorted(r.info.run_name for r in children) == [f"degree-{d}" for d in range(1, 6)]
    for child in children + [parent]:
        assert child.info.status == "FINISHED"
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        degree = child.data.params["degree"]
        assert child.data.metrics["cv_mse_mean"] == pytest.approx(
            metrics["per_degree"][degree]["mean"])
        assert child.data.metrics["chosen_min_draws"] == (
            metrics["draws"]["min_rule"]["frequency"][degree])
        history = client.get_metric_history(child.info.run_id, "cv_mse_fold")
        assert sorted(m.step for m in history) == [0, 1, 2, 3, 4]


def test_under_mlflow_run_the_study_becomes_a_child(tmp_path, tracking, monkeypatch):
    client, experiment_id = tracking
    outer = client.create_run(experiment_id, run_name="mlflow-run-entry-point")
    client.log_param(outer.info.run_id, "study", "polyfit")
    monkeypatch.setenv("MLFLOW_RUN_ID", outer.info.run_id)

    polyfit.run(small_config(max_degree=3), tmp_path / "r.json", tmp_path / "m.json",
                tmp_path / "p.png")

    runs = {r.info.run_name: r for r in _runs(client, experiment_id)}
    assert runs["polyfit"].data.tags["mlflow.parentRunId"] == outer.info.run_id
    assert runs["degree-2"].data.tags["mlflow.parentRunId"] == runs["polyfit"].info.run_id
    outer_now = client.get_run(outer.info.run_id)
    assert outer_now.data.params == {"study": "polyfit"}  # not resumed, not overwritten
    assert outer_now.info.status == "RUNNING"  # still the entry point's to end
    assert mlflow.active_run() is None


def test_a_crash_marks_the_run_failed_and_leaves_no_outputs(tmp_path, tracking, monkeypatch):
    client, experiment_id = tracking

    def broken_log_text(*args, **kwargs):
        raise RuntimeError("artifact store down")

    monkeypatch.setattr(polyfit.tracking, "log_text", broken_log_text)
    with pytest.raises(RuntimeError, match="artifact store down"):
        polyfit.run(small_config(), tmp_path / "r.json", tmp_path / "m.json", tmp_path / "p.png")
    runs = _runs(client, experiment_id)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert mlflow.active_run() is None
    assert not any((tmp_path / name).exists() for name in ("r.json", "m.json", "p.png"))
