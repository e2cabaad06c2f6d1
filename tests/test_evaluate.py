"""evaluate stage on a study written to disk the way the train stage writes one: run.json,
history.csv, test_predictions.npy and bn_params.npz for 4 variants × 3 seeds (no training)."""

import csv
import html
import json
import math

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import confusion_matrix
import yaml
from mlflow.tracking import MlflowClient

from ablations import plots, stats, tracking, verdicts
from ablations.config import load_params
from ablations.errors import DataError
from ablations.evaluate import (confusion_counts, epochs_to_target, evaluate_study, headline,
                                read_study, replay_rounds, study_histories, study_metrics,
                                study_results)
from ablations.history import read_curves, write_history
from ablations.io import write_json
from ablations.layout import UnitFolder
from ablations.layout import FIGURES
from ablations.report import study_section
from conftest import REPO, copy_store

TARGET = 0.8
CLASSES = ["zero", "one", "two", "three"]
N_TEST = 40
# Per variant: validation accuracy per epoch for each seed (target 0.8), seconds per epoch,
# test accuracy per seed and which seed diverged.
VAL_ACCURACY = {
    "relu": [[0.5, 0.7, 0.82, 0.85], [0.6, 0.75, 0.79, 0.81], [0.5, 0.81, 0.83, 0.84]],  # 3, 4, 2
    "relu-bn": [[0.81, 0.85, 0.9, 0.9], [0.7, 0.85, 0.9, 0.9], [0.82, 0.86, 0.9, 0.9]],  # 1, 2, 1
    "tanh": [[0.5, 0.6, 0.65, 0.7], [0.5, 0.6, 0.7, 0.7], [0.4, float("nan")]],  # never
    "tanh-bn": [[0.6, 0.7, 0.8, 0.85], [0.6, 0.7, 0.75, 0.78], [0.6, 0.7, 0.75, 0.79]],  # 3, -, -
    "source": [[0.9, 0.95, 0.97, 0.99]] * 3,
}
EPOCH_SECONDS = {"relu": 2.0, "relu-bn": 3.0, "tanh": 2.0, "tanh-bn": 3.0, "source": 1.0}
TEST_ACCURACY = {"relu": [0.85, 0.86, 0.84], "relu-bn": [0.90, 0.91, 0.92],
                 "tanh": [0.70, 0.72, 0.10], "tanh-bn": [0.80, 0.82, 0.81],
                 "source": [0.99, 0.99, 0.99]}
DIVERGED = {("tanh", 2)}
# relu's last three validation accuracies rise 7.5 points per epoch on average, relu-bn's 2.5.
STILL_IMPROVING = " (may change with more epochs: relu-bn, relu still improving at the end)"
VARIANTS = {"relu": {}, "relu-bn": {"norm": "before"}, "tanh": {"activation": "tanh"},
            "tanh-bn": {"activation": "tanh", "norm": "before"}}


def write_study_params(folder, seeds=(0, 1, 2), variants=VARIANTS, also_compare=(), factors=None):
    """folder/params.yaml with one study `unit` on prepared data `d` (as conftest.write_params,
    plus seeds, a baseline and the pairs `also_compare`)."""
    prepared = {"source": "fashion_mnist", "scaling": "zero_one"}
    params = {"data": {"raw": ["fashion_mnist"], "prepared": {"d": prepared, "d2": prepared}},
              "studies": {"unit": {"question": "Does BatchNorm help <small> CNNs & why?",
                                   "data": "d", "seeds": list(seeds), "baseline": "relu",
                                   "also_compare": [list(pair) for pair in also_compare],
                                   "target_val_accuracy": TARGET,
                                   "defaults": {"conv_filters": [4], "dense_units": [8],
                                                "epochs": 4, "batch_size": 16},
                                   "variants": variants, **({"factors": factors} if factors else {})}},
              "polyfit": {"coefficients": [1.0, 2.0], "noise": 0.1, "n": 20, "x_range": [0, 1],
                          "max_degree": 2, "folds": 2, "seed": 0}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return load_params(folder / "params.yaml")


def write_prepared_data(folder, seed=0, n_test=N_TEST):
    """What standardize writes: scaled arrays, classes.json, stats.json."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part, count in (("train", 80), ("val", 40), ("test", n_test)):
        y = np.arange(count) % len(CLASSES)
        x = rng.uniform(size=(count, 8, 8, 1)).astype(np.float32) * (y[:, None, None, None] + 1) / 4
        np.save(folder / f"x_{part}.npy", x)
        np.save(folder / f"y_{part}.npy", y.astype(np.int64))
    write_json(folder / "classes.json", CLASSES)
    write_json(folder / "stats.json", {"offset": [0.0], "scale": [255.0]})
    return folder


def _history(val_accuracy, seconds):
    return [{"epoch": e, "loss": 1 - v, "accuracy": v, "val_loss": 1 - v, "val_accuracy": v,
             "epoch_seconds": seconds} for e, v in enumerate(val_accuracy, start=1)]


def write_unit(models_dir, name, index, seed, y_test):
    folder = UnitFolder.of(models_dir, name, seed).path
    folder.mkdir(parents=True)
    diverged = (name, index) in DIVERGED
    accuracy = TEST_ACCURACY[name][index]
    write_json(folder / "run.json", {
        "run_id": f"run-{name}-{seed}", "seed": seed, "fit_seconds": 10.0 + index,
        "diverged": diverged, "test_loss": float("nan") if diverged else 1 - accuracy,
        "test_accuracy": accuracy, "fingerprint": "f", "tracking_complete": True})
    write_history(folder / "history.csv", _history(VAL_ACCURACY[name][index], EPOCH_SECONDS[name]))
    wrong = np.random.default_rng(seed).random(y_test.size) > accuracy
    np.save(folder / "test_predictions.npy", np.where(wrong, (y_test + 1) % len(CLASSES), y_test))
    (folder / "model.keras").write_bytes(b"not loaded by evaluate")
    if "-bn" in name:
        rng = np.random.default_rng(seed)
        np.savez(folder / "bn_params.npz", **{
            f"{layer}/{param}": rng.normal(1.0 if param == "gamma" else 0.0, 0.1, size=size)
            for layer, size in (("input_bn", 1), ("conv0_bn", 4), ("dense0_bn", 8))
            for param in ("gamma", "beta")})


def write_fake_study(root, seeds=(0, 1, 2), variants=VARIANTS, also_compare=(), factors=None):
    """(params, models/unit, data/prepared) of a study trained 'for real' on disk."""
    params = write_study_params(root, seeds, {} if factors else variants, also_compare, factors)
    data_dir = root / "data" / "prepared"
    y_test = {"d": np.load(write_prepared_data(data_dir / "d") / "y_test.npy"),
              "d2": np.load(write_prepared_data(data_dir / "d2", n_test=24) / "y_test.npy")}
    models_dir = root / "models" / "unit"
    for name in variants:
        for index, seed in enumerate(seeds):
            write_unit(models_dir, name, index, seed, y_test[params.variant_data("unit", name)])
    return params, models_dir, data_dir


def evaluate(root, params, models_dir, data_dir):
    """The evaluate stage's function, with dvc.yaml's layout under `root`."""
    return evaluate_study(params, "unit", models_dir, data_dir, root / "results" / "unit.json",
                          root / "metrics" / "unit.json", root / "curves" / "unit.csv",
                          root / "accuracy" / "unit.csv")


def plot(root, params, models_dir, data_dir):
    """The figures the evaluate stage draws from its outputs under `root`."""
    return plots.plot_study(params, "unit", root / "results" / "unit.json",
                            root / "curves" / "unit.csv", models_dir, data_dir,
                            root / "plots" / "unit")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, migrated_store):
    """(root, results as read back from results/unit.json, tracking URI): the fake study
    evaluated, then plotted, once for the module."""
    root = tmp_path_factory.mktemp("study")
    uri = copy_store(migrated_store, root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        study = write_fake_study(root)
        evaluate(root, *study)
        plot(root, *study)
    return root, json.loads((root / "results" / "unit.json").read_text()), uri


def test_epochs_to_target_counts_epochs_and_seconds():
    history = _history([0.5, 0.79, 0.8, 0.9], 2.5)
    assert epochs_to_target(history, 0.8) == (3, 7.5)
    assert epochs_to_target(history, 0.95) == (None, None)
    assert epochs_to_target(_history([0.5, float("nan")], 1.0), 0.8) == (None, None)


def test_evaluate_study_metrics(evaluated):
    _, m, _ = evaluated
    assert (m["study"], m["baseline"], m["seeds"]) == ("unit", "relu", [0, 1, 2])
    assert m["target_val_accuracy"] == TARGET
    assert m["question"].startswith("Does BatchNorm")

    relu = m["variants"]["relu"]
    mean, half = stats.mean_ci([0.85, 0.86, 0.84])
    assert relu["test_accuracy"]["mean"] == pytest.approx(mean) == pytest.approx(0.85)
    assert relu["test_accuracy"]["ci"] == pytest.approx(half)
    assert relu["test_accuracy"]["values"] == {"seed0": 0.85, "seed1": 0.86, "seed2": 0.84}
    assert relu["epochs_to_target"]["values"] == {"seed0": 3, "seed1": 4, "seed2": 2}
    assert relu["epochs_to_target"]["mean"] == pytest.approx(3.0)
    assert relu["seconds_to_target"]["mean"] == pytest.approx(6.0)
    assert (relu["epochs_to_target"]["reached"], relu["epochs_to_target"]["of"]) == (3, 3)
    runs = {f"seed{seed}": len(VAL_ACCURACY["relu"][index]) for index, seed in enumerate((0, 1, 2))}
    assert relu["epochs_run"]["values"] == runs  # history.csv's rows: fewer if stopped early

    tanh = m["variants"]["tanh"]  # never reaches the target; seed 2 diverged (test loss NaN)
    assert tanh["epochs_to_target"] | {"values": None} == {
        "mean": None, "ci": None, "n": 0, "excluded": 3, "reached": 0, "of": 3, "values": None}
    assert tanh["diverged"] == 1
    assert tanh["test_loss"]["n"] == 2 and tanh["test_loss"]["values"]["seed2"] is None
    assert tanh["test_loss"]["mean"] == pytest.approx(0.29)

    tanh_bn = m["variants"]["tanh-bn"]["epochs_to_target"]  # one seed of three reached it
    assert (tanh_bn["mean"], tanh_bn["ci"], tanh_bn["reached"]) == (3, None, 1)


def test_evaluate_bn_speedup_pairs_twins_by_seed(evaluated):
    _, m, _ = evaluated
    assert set(m["bn_speedup"]) == {"relu-bn", "tanh-bn"}
    relu_bn = m["bn_speedup"]["relu-bn"]
    assert relu_bn["twin"] == "relu"  # not tanh: only norm differs
    ratios = [3 / 1, 4 / 2, 2 / 1]  # relu epochs ÷ relu-bn epochs, seed by seed
    epochs = relu_bn["epochs_ratio"]
    assert epochs["values"] == pytest.approx(dict(zip(["seed0", "seed1", "seed2"], ratios)))
    assert (epochs["mean"], epochs["ci"]) == pytest.approx(stats.mean_ci(ratios))
    seconds = [6 / 3, 8 / 6, 4 / 3]
    assert relu_bn["seconds_ratio"]["mean"] == pytest.approx(np.mean(seconds))
    tanh_bn = m["bn_speedup"]["tanh-bn"]  # its twin never reached the target
    assert tanh_bn["twin"] == "tanh"
    assert tanh_bn["epochs_ratio"]["mean"] is None and tanh_bn["bn_only_reached"] == 1


def test_evaluate_comparisons_and_verdict(evaluated):
    _, m, _ = evaluated
    assert set(m["comparisons"]) == {"relu-bn", "tanh", "tanh-bn"}
    diff, half = stats.mean_ci([5.0, 5.0, 8.0])  # relu-bn − relu per seed, in points
    c = m["comparisons"]["relu-bn"]
    assert (c["vs"], c["judgement"], c["n"]) == ("relu", "better", 3)  # its own 95% interval
    assert (c["difference_points"], c["ci_points"]) == pytest.approx((diff, half))
    # Holm over the 3 answers (each variant vs the baseline; the speed-up is measured in whole
    # epochs, not an answer): the smallest p is tested at 0.05 / 3, and none is decided, so
    # every interval is at 1 − 0.05 / 3.
    decided = {d["answer"]: d for d in m["decisions"]}
    pair = decided["relu-bn − relu"]
    assert (pair["decision"], pair["seeds"], pair["level"]) == ("undecided", 3, 1 - 0.05 / 3)
    _, wide = stats.mean_ci([5.0, 5.0, 8.0], confidence=1 - 0.05 / 3)
    assert pair["interval"] == pytest.approx([diff - wide, diff + wide])
    assert c["decision"] == "undecided"
    assert c["text"] == (f"relu-bn − relu: undecided, +6.0 ± {wide:.1f} points (3 seeds); "
                         f"{pair['would_decide']}" + STILL_IMPROVING)
    assert pair["would_decide"].startswith("about ") and "seeds to show a 6.0-point" in pair["would_decide"]
    assert "the interval covers 0, so no difference" not in m["comparisons"]["tanh"]["text"]
    assert m["comparisons"]["tanh-bn"]["judgement"] == "worse"  # unadjusted, in the detail
    assert [d["kind"] for d in m["decisions"]] == ["pair"] * 3
    assert m["decided"] == {"decided": 0, "answers": 3}
    assert m["best_variant"] == "relu-bn"
    acc_mean, acc_half = stats.mean_ci([0.90, 0.91, 0.92])
    assert m["summary"].startswith(
        f"Best mean test accuracy: relu-bn, {100 * acc_mean:.1f} ± {100 * acc_half:.1f} % "
        "over 3 seeds.")
    assert "Diverged: tanh (1 of 3 seeds)." in m["summary"]
    assert m["verdict"] == (
        "0 of 3 answers decided (Holm over the study's answers at 95%). "
        + " ".join(verdicts.decision_sentence(d) + "." for d in m["decisions"]) + " " + m["summary"])


def test_plot_writes_figures_and_each_stage_one_run(evaluated):
    root, results, uri = evaluated
    written = sorted(p.name for p in (root / "plots" / "unit").iterdir())
    assert written == sorted(FIGURES)
    for name in written:
        assert (root / "plots" / "unit" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("unit")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"unit", "unit-summary", "unit-figures"}
    summary = runs["unit-summary"]
    for name in ("unit-summary", "unit-figures"):  # nested under the study's run
        assert runs[name].data.tags["mlflow.parentRunId"] == runs["unit"].info.run_id
    assert summary.data.metrics["relu-bn.test_accuracy_mean"] == pytest.approx(0.91)
    assert summary.data.tags["mlflow.note.content"] == results["verdict"]
    assert summary.data.metrics["answers"] == 3 and summary.data.metrics["answers_decided"] == 0
    study = runs["unit"].data.tags  # one tag per decision, its headline sentence
    assert study["decisions"] == "0 of 3"
    assert {k: v for k, v in study.items() if k.startswith("decision.")} == {
        f"decision.{tracking.tag_key(d['answer'])}": verdicts.decision_sentence(d)
        for d in results["decisions"]}
    assert "decision.relu-bn - relu" in study  # "−" is not allowed in a key: "-"
    assert {a.path for a in client.list_artifacts(summary.info.run_id)} == {"unit.json"}
    figures = runs["unit-figures"]
    assert figures.data.tags["dvc_stage"] == "evaluate@unit"
    assert {a.path for a in client.list_artifacts(figures.info.run_id)} == set(FIGURES)


def test_headline_is_one_file_of_a_few_keys_equal_to_the_results(evaluated):
    """metrics/unit.json: the study's headline nested under its name; its numbers are those of
    the results file. Three comparisons with the baseline (> HEADLINE_PAIRS): no differences,
    they stay in the results."""
    root, m, _ = evaluated
    shown = json.loads((root / "metrics" / "unit.json").read_text())
    assert shown == headline(m) == {"unit": {
        "best": "relu-bn", "acc": 100 * m["variants"]["relu-bn"]["test_accuracy"]["mean"],
        "decided": 0, "answers": 3}}
    assert list(shown["unit"]) == ["best", "acc", "decided", "answers"]  # DVC's column order
    assert shown["unit"]["acc"] == pytest.approx(91.0)
    rows = list(csv.DictReader((root / "accuracy" / "unit.csv").open()))
    assert [r["variant"] for r in rows] == list(VARIANTS)
    tanh = m["variants"]["tanh"]["test_accuracy"]
    assert rows[2] == {"variant": "tanh", "acc": str(100 * tanh["mean"]),
                       "acc_ci": str(100 * tanh["ci"]), "n": str(tanh["n"])}


def test_headline_has_the_difference_of_each_answer_it_names(tmp_path):
    """Two comparisons with the baseline: each one's difference in points, keyed by the
    variant, equal to its decision's."""
    variants = {name: VARIANTS[name] for name in ("relu", "relu-bn", "tanh")}
    params, models_dir, data_dir = write_fake_study(tmp_path, variants=variants)
    m = study_metrics(params, "unit", read_study(params, "unit", models_dir, data_dir))
    decided = {d["answer"]: d for d in m["decisions"]}
    assert headline(m)["unit"] == {
        "best": "relu-bn", "acc": pytest.approx(91.0), **m["decided"],
        "relu-bn": decided["relu-bn − relu"]["difference"],
        "tanh": decided["tanh − relu"]["difference"]}
    assert headline(m)["unit"]["relu-bn"] == pytest.approx(6.0)
    renamed = [{**d, "variants": ["best" if v == "tanh" else v for v in d["variants"]]}
               for d in m["decisions"]]  # a variant named like a headline key
    with pytest.raises(DataError, match=r"studies\.unit: best is a headline key; rename"):
        headline({**m, "decisions": renamed})


def test_curves_file_is_every_history_in_long_format(evaluated, tmp_path):
    root, _, _ = evaluated
    path = root / "curves" / "unit.csv"
    lines = path.read_text().splitlines()
    assert lines[0] == "variant,seed,epoch,metric,value"
    epochs = sum(len(VAL_ACCURACY[name][index]) for name in VARIANTS for index in range(3))
    assert len(lines) == 1 + 4 * epochs  # loss, val_loss, accuracy, val_accuracy per epoch
    assert "relu-bn,1,2,val_accuracy,0.85" in lines
    curves = read_curves(path)
    assert list(curves) == list(VARIANTS) and list(curves["relu"]) == [0, 1, 2]
    assert [row["val_accuracy"] for row in curves["relu"][1]] == VAL_ACCURACY["relu"][1]
    assert math.isnan(curves["tanh"][2][1]["val_accuracy"])  # the diverged epoch stays NaN


def test_confusion_counts_pool_the_best_variants_seeds(evaluated):
    root, m, _ = evaluated
    confusion = m["confusion"]
    assert (confusion["variant"], confusion["seeds"], confusion["classes"]) == (
        "relu-bn", 3, CLASSES)
    y_test = np.load(root / "data" / "prepared" / "d" / "y_test.npy")
    predictions = [np.load(UnitFolder.of(root / "models" / "unit", "relu-bn", seed).path /
                           "test_predictions.npy") for seed in (0, 1, 2)]
    counts = np.array(confusion["counts"])
    assert counts.sum() == 3 * N_TEST
    assert np.trace(counts) == sum(int((p == y_test).sum()) for p in predictions)
    assert counts[0].sum() == 3 * int((y_test == 0).sum())  # rows: the true class
    assert counts.tolist() == confusion_matrix(np.concatenate([y_test] * 3),
                                               np.concatenate(predictions),
                                               labels=np.arange(len(CLASSES))).tolist()


def test_confusion_counts_are_scikit_learns_confusion_matrix():
    """Every class present or not, predictions of any class: scikit-learn's counts."""
    rng = np.random.default_rng(3)
    for classes in (2, 5, 10):
        truth = rng.integers(0, classes, 400)
        predicted = np.where(rng.random(400) < 0.6, truth, rng.integers(0, classes, 400))
        truth[truth == classes - 1] = 0  # one class never true
        assert confusion_counts(truth, predicted, classes).tolist() == confusion_matrix(
            truth, predicted, labels=np.arange(classes)).tolist()


def test_one_seed_study_has_no_intervals(tmp_path):
    params, models_dir, data_dir = write_fake_study(tmp_path, seeds=(5,))
    m = study_metrics(params, "unit", read_study(params, "unit", models_dir, data_dir))
    assert m["variants"]["relu"]["test_accuracy"]["ci"] is None
    assert m["comparisons"]["relu-bn"]["judgement"] is None
    assert m["comparisons"]["relu-bn"]["text"] == (
        "relu-bn − relu: undecided, +5.0 points (1 seed); at least 2 seeds in common: one "
        "measures no spread" + STILL_IMPROVING)
    assert all(d["decision"] == "undecided" and d["interval"] is None for d in m["decisions"])
    assert all(verdicts.decision_sentence(d) + "." in m["verdict"] for d in m["decisions"])
    assert "relu-bn, 90.0 % over 1 seed." in m["verdict"]


def test_pairs_the_question_asks_for_are_compared_in_the_verdict(tmp_path):
    """bn_placement asks before vs after, not only each vs none: `also_compare` pairs."""
    params, models_dir, data_dir = write_fake_study(tmp_path, also_compare=[("relu-bn", "tanh-bn")])
    m = study_metrics(params, "unit", read_study(params, "unit", models_dir, data_dir))
    pair = m["pair_comparisons"]["relu-bn vs tanh-bn"]
    assert (pair["vs"], pair["judgement"]) == ("tanh-bn", "better")  # 0.90-0.92 vs tanh-bn's lower
    (decided,) = [d for d in m["decisions"] if d["answer"] == "relu-bn − tanh-bn"]
    assert decided["variants"] == ["relu-bn", "tanh-bn"] and pair["decision"] == decided["decision"]
    assert pair["text"].startswith(verdicts.decision_sentence(decided))
    assert verdicts.decision_sentence(decided) + "." in m["verdict"]
    assert "relu-bn-vs-tanh-bn" not in headline(m)["unit"]  # also_compare: in the results
    assert set(m["comparisons"]) == {"relu-bn", "tanh", "tanh-bn"}  # the baseline's stay
    page = study_section("unit", m, tmp_path / "no-plots")
    assert html.escape(decided["answer"]) in page and "<details>" in page


def test_factorial_study_decides_its_main_effects(tmp_path):
    """The same four variants as a 2 x 2 design (activation x norm): the answers are the two
    main effects and the speed-ups; the comparisons with the baseline are detail, the effects
    within each setting and the interaction too."""
    factors = {"activation": {"relu": {}, "tanh": {"activation": "tanh"}},
               "norm": {"none": {}, "bn": {"norm": "before"}}}
    params, models_dir, data_dir = write_fake_study(tmp_path, factors=factors)
    assert set(params.studies["unit"].variants) == set(VARIANTS)
    m = study_metrics(params, "unit", read_study(params, "unit", models_dir, data_dir))
    assert [(d["answer"], d["kind"]) for d in m["decisions"]][:2] == [
        ("activation tanh − relu", "main"), ("norm bn − none", "main")]
    assert len(m["decisions"]) == 2  # the speed-ups are in whole epochs: not answers
    # Two two-level factors: each main effect is a headline key, named after its level.
    assert headline(m)["unit"] == {"best": "relu-bn", "acc": pytest.approx(91.0), **m["decided"],
                                   "tanh": m["decisions"][0]["difference"],
                                   "bn": m["decisions"][1]["difference"]}
    norm = m["decisions"][1]
    # (relu-bn − relu + tanh-bn − tanh) / 2 per seed: (5 + 10) / 2, (5 + 10) / 2, (8 + 71) / 2;
    # balanced, so the blocked model's estimate is their mean; error from all 12 runs.
    assert norm["difference"] == pytest.approx(np.mean([7.5, 7.5, 39.5]))
    assert norm["method"].startswith("factorial model of the 4 cells with 3 seeds as blocks "
                                     "(OLS, residual df 6)")
    assert "Holm over 2 answers" in norm["method"]
    assert all("decision" not in c for c in m["comparisons"].values())
    assert m["comparisons"]["relu-bn"]["text"].startswith("relu-bn is 6.0 ± ")  # its own interval
    assert m["details"][0].startswith("activation tanh − relu, within each setting (95% "
                                      "intervals, each on its own): norm=")
    assert "norm=none: -34.3 ± 85.3 (not shown)" in m["details"][0]
    assert any(d.startswith("activation tanh × norm bn (interaction)") for d in m["details"])
    page = study_section("unit", m, tmp_path / "no-plots")
    details = page[page.index("<details>"):page.index("</details>")]
    assert html.escape(m["comparisons"]["relu-bn"]["text"]) in details
    assert html.escape(m["details"][0]) in details


def test_one_seed_factorial_decides_from_the_additive_model(tmp_path):
    factors = {"activation": {"relu": {}, "tanh": {"activation": "tanh"}},
               "norm": {"none": {}, "bn": {"norm": "before"}}}
    params, models_dir, data_dir = write_fake_study(tmp_path, seeds=(0,), factors=factors)
    m = study_metrics(params, "unit", read_study(params, "unit", models_dir, data_dir))
    main = m["decisions"][0]
    assert main["seeds"] == 1 and main["interval"] is not None  # df 1: the interaction
    assert "ANOVA without replication" in main["method"]
    assert "assumes the factors' effects add up" in main["method"]
    assert ("Main effects from the additive model of the 4 cells (ANOVA without replication; "
            "OLS, residual df 1): assumes the factors' effects add up.") in m["verdict"]


def test_bn_violins_only_where_the_study_varies_batchnorm(tmp_path):
    """Same BatchNorm in every variant (as in init_reg): its learned parameters answer nothing
    the study asks, so no bn_params.png although the units saved them."""
    variants = {"relu": {"norm": "before"}, "relu-bn": {"norm": "before", "activation": "tanh"}}
    params, models_dir, data_dir = write_fake_study(tmp_path, variants=variants)
    units = read_study(params, "unit", models_dir, data_dir)
    figures = plots.study_figures(params, "unit", study_results(params, "unit", units, data_dir),
                                  study_histories(units), models_dir, data_dir)
    assert (UnitFolder.of(models_dir, "relu-bn", 0).path / "bn_params.npz").exists()
    assert "bn_params.png" not in figures and "learning_curves.png" in figures
    plots.close(figures)


def test_variant_on_other_data_is_not_compared(tmp_path):
    """A transfer source trains and is tested on other data: its (higher) accuracy is
    reported but neither compared with the baseline nor the best variant."""
    variants = {**VARIANTS, "source": {"data": "d2"}}
    params, models_dir, data_dir = write_fake_study(tmp_path, variants=variants)
    m = study_metrics(params, "unit", read_study(params, "unit", models_dir, data_dir))
    assert m["variants"]["source"]["data"] == "d2" and m["data"] == "d"
    assert m["variants"]["source"]["test_accuracy"]["mean"] == pytest.approx(0.99)
    assert "source" not in m["comparisons"]
    assert m["best_variant"] == "relu-bn"


def test_missing_training_names_file_and_stage(tmp_path):
    params, models_dir, data_dir = write_fake_study(tmp_path)
    (UnitFolder.of(models_dir, "tanh", 1).path / "run.json").unlink()
    with pytest.raises(DataError, match=r"tanh/seed1/run.json: missing; .*dvc repro train@unit"):
        evaluate(tmp_path, params, models_dir, data_dir)
    outputs = ("results", "metrics", "curves", "accuracy", "plots")
    assert not any((tmp_path / name).exists() for name in outputs)
    # The stage's command: one error line, exit 2, and no figure drawn either.
    from ablations.cli import main

    code = main(["--params", str(tmp_path / "params.yaml"), "evaluate", "unit",
                 "--models", str(models_dir), "--data", str(data_dir),
                 *(f"--{name}={tmp_path / name / 'unit'}" for name in outputs)])
    assert code == 2
    assert not any((tmp_path / name).exists() for name in outputs)


def test_evaluate_of_an_unknown_study_is_one_error_line(tmp_path, capsys):
    from ablations.cli import main

    write_study_params(tmp_path)
    outputs = ("results", "metrics", "curves", "accuracy", "plots")
    code = main(["--params", str(tmp_path / "params.yaml"), "evaluate", "nope",
                 "--models", str(tmp_path / "models"), "--data", str(tmp_path / "data"),
                 *(f"--{name}={tmp_path / name / 'nope'}" for name in outputs)])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: studies.nope: no such study (have ['unit'])"]
    assert not any((tmp_path / name).exists() for name in outputs)


def test_predictions_of_another_dataset_are_rejected(tmp_path):
    params, models_dir, data_dir = write_fake_study(tmp_path)
    np.save(UnitFolder.of(models_dir, "relu", 0).path / "test_predictions.npy", np.zeros(7, dtype=np.int64))
    with pytest.raises(DataError, match=r"relu/seed0/test_predictions.npy: 7 predictions for 40"):
        evaluate(tmp_path, params, models_dir, data_dir)


def test_results_and_metrics_files_have_no_nan(evaluated):
    """DVC and browsers read strict JSON: a diverged run's NaN must be written as null."""
    root, _, _ = evaluated
    for path in (root / "results" / "unit.json", root / "metrics" / "unit.json"):
        text = path.read_text()
        json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {path}"))
        assert not any(isinstance(v, float) and math.isnan(v) for v in _leaves(json.loads(text)))


def _leaves(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaves(value)
    else:
        yield tree


def test_bn_violins_take_constant_and_single_values():
    """Untrained BN layers have gamma == 1 everywhere: no KDE, still one mark per layer."""
    figure = plots.bn_violins({"v": {"input_bn": {"gamma": np.ones(3), "beta": np.zeros(1)},
                                     "conv0_bn": {"gamma": np.array([0.9, 1.1]),
                                                  "beta": np.array([0.0, 0.1])}}}, "s")
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["input_bn", "conv0_bn"]
    plots.close({"f": figure})


def test_evaluate_and_report_do_not_import_keras():
    """They read files only: no TensorFlow start-up (seconds, GBs) in these stages; evaluate
    computes its numbers before it imports matplotlib for the figures."""
    import subprocess
    import sys

    def imported(modules):
        code = (f"import sys, {modules}; print(sorted({{'keras', 'tensorflow', 'torch', 'jax', "
                "'matplotlib'} & set(sys.modules)))")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert imported("ablations.evaluate, ablations.stats, ablations.history") == "[]"
    assert imported("ablations.report, ablations.plots") == "['matplotlib']"


def test_convergence_flags_curves_still_rising_and_the_budget_is_stated(evaluated):
    _, m, _ = evaluated
    relu = m["variants"]["relu"]["convergence"]
    slopes = [7.5, 3.0, 1.5]  # least-squares slopes of the last 3 evaluations, points/epoch
    assert relu["end_slope_points_per_epoch"]["mean"] == pytest.approx(sum(slopes) / 3)
    assert relu["still_improving"] is True
    assert m["budget"] == {"train_images": 80, "epochs": [4], "seeds": 3,
                           "text": "These answers rest on 80 training images, 4 epochs and "
                                   "3 seeds per variant."}
    assert m["verdict"].endswith(m["budget"]["text"]) and m["summary"].endswith(m["budget"]["text"])


def test_converged_variants_carry_no_caveat():
    from ablations.convergence import caveat, convergence, end_slope

    flat = [{"epoch": e, "val_accuracy": 0.9 + 0.001 * e} for e in range(1, 6)]
    rising = [{"epoch": e / 4, "val_accuracy": 0.5 + 0.01 * e} for e in range(1, 9)]  # 4 per epoch
    assert end_slope(flat) == pytest.approx(0.1) and end_slope(rising) == pytest.approx(4.0)
    flags = {"a": convergence([flat, flat]), "b": convergence([rising, rising])}
    assert not flags["a"]["still_improving"] and flags["b"]["still_improving"]
    assert caveat(["a"], flags) == ""
    assert caveat(["a", "b"], flags) == " (may change with more epochs: b still improving at the end)"
    flags.update(c=flags["b"], d=flags["b"])
    assert caveat(["b", "c", "d"], flags) == (
        " (may change with more epochs: all 3 variants it rests on were still improving at the end)")
    assert end_slope([{"epoch": 1, "val_accuracy": float("nan")}]) is None



def test_steps_to_target_interpolates_between_evaluations():
    from ablations.evaluate import steps_to_target

    rows = [{"step": 0, "val_accuracy": 0.1, "train_seconds": 0.0},
            {"step": 10, "val_accuracy": 0.6, "train_seconds": 2.0},
            {"step": 20, "val_accuracy": 0.8, "train_seconds": 4.0},
            {"step": 30, "val_accuracy": 0.7, "train_seconds": 6.0}]
    assert steps_to_target(rows, 0.75) == pytest.approx((17.5, 3.5))  # 0.6 → 0.8 at 3/4
    assert steps_to_target(rows, 0.05) == (0, 0.0)
    assert steps_to_target(rows, 0.9) == (None, None)


def test_bn_speedup_in_steps_with_an_interval_over_seeds():
    """Validated within epochs, BN reaches 0.75 after 12, 10, 16 steps, its twin after 30, 30,
    32: the speed-up is the mean of the per-seed ratios 2.5, 3, 2, with its t-interval."""
    from ablations.config import Study
    from ablations.decisions import decide_study
    from ablations.evaluate import speedup, speedup_label, speedup_ratios, variant_metrics

    def unit(seed, crossing):  # val accuracy rises linearly to 0.75 at step `crossing`
        steps = [{"step": s, "epoch": s / 8, "val_accuracy": 0.75 * s / crossing,
                  "train_seconds": 0.1 * s} for s in range(0, 41, 2)]
        history = [{"epoch": e, "val_accuracy": 0.75 * 8 * e / crossing, "epoch_seconds": 1.0,
                    "loss": 1.0} for e in range(1, 6)]
        return {"seed": seed, "steps": steps, "history": history, "diverged": False,
                "test_accuracy": 0.8, "test_loss": 0.5, "fit_seconds": 5.0}

    bn = variant_metrics([unit(s, c) for s, c in enumerate((12, 10, 16))], 0.75, "d")
    twin = variant_metrics([unit(s, c) for s, c in enumerate((30, 30, 32))], 0.75, "d")
    assert bn["steps_to_target"]["values"] == pytest.approx({"seed0": 12, "seed1": 10, "seed2": 16})
    ratio = speedup(bn, twin)["steps_ratio"]
    mean, half = stats.mean_ci([2.5, 3.0, 2.0])
    assert (ratio["mean"], ratio["ci"]) == pytest.approx((mean, half))
    assert speedup(bn, twin)["train_seconds_ratio"]["mean"] == pytest.approx(mean)
    # Measured in steps, the speed-up is one of the question's answers: decided against 1, on
    # the log scale (the geometric mean of the ratios; one pair: a t-interval of the logs).
    ratios = speedup_ratios({"bn": {"twin": "twin", **speedup(bn, twin)}})
    assert ratios == {"bn vs twin": {"variants": ["bn", "twin"],
                                     "values": pytest.approx({"seed0": 2.5, "seed1": 3.0, "seed2": 2.0})}}
    spec = Study(question="q", data="d", baseline="twin", target_val_accuracy=0.75, defaults={},
                 variants={"twin": {}, "bn": {}})
    one_seed = {"twin": {"seed0": 0.8}, "bn": {"seed0": 0.8}}  # the pair: no interval, no Holm
    label = speedup_label(0.75)
    (_, decided) = decide_study(spec, one_seed, ratios=ratios, ratio_label=label)
    logs = np.log([2.5, 3.0, 2.0])
    lo, hi = scipy.stats.t.interval(0.95, 2, loc=logs.mean(), scale=scipy.stats.sem(logs))
    assert (decided["answer"], decided["decision"], decided["level"]) == (label, "better", 0.95)
    assert decided["difference"] == pytest.approx(np.exp(logs.mean()))
    assert decided["interval"] == pytest.approx([np.exp(lo), np.exp(hi)])
    assert verdicts.decision_sentence(decided) == (
        f"{label}: better: fewer with BatchNorm, ratio {np.exp(logs.mean()):.2f} "
        f"[{np.exp(lo):.2f}, {np.exp(hi):.2f}] (3 seeds)")
    history_only = {key: value for key, value in speedup(bn, twin).items() if "steps" not in key
                    and "train_seconds" not in key}
    assert speedup_ratios({"bn": {"twin": "twin", **history_only}}) == {}


def _fake_default_study(root, params, study, rng):
    """Every (variant, seed) unit of one study of the real params.yaml, written the way train
    writes them, with random accuracies (only the shape of the results matters here)."""
    spec, labels = params.studies[study], {}
    for name in spec.variants:
        data = params.variant_data(study, name)
        if data not in labels:
            folder = root / "data" / data
            folder.mkdir(parents=True, exist_ok=True)
            labels[data] = np.arange(20) % 4
            np.save(folder / "y_test.npy", labels[data])
        # a range of seeds: every seed its rounds may ask for
        for seed in spec.seeds_of(name, {name: spec.seeds.max} if spec.sequential else None):
            folder = UnitFolder.of(root / "models" / study, name, seed).path
            folder.mkdir(parents=True)
            accuracy = float(rng.uniform(0.5, 0.95))
            write_json(folder / "run.json", {"seed": seed, "fit_seconds": 10.0,
                                             "diverged": False, "test_loss": 1 - accuracy,
                                             "test_accuracy": accuracy})
            write_history(folder / "history.csv", _history(rng.uniform(0.5, 0.95, 3), 1.0))
            np.save(folder / "test_predictions.npy", labels[data])


def test_default_studies_headline_is_at_most_40_dvc_columns(tmp_path, repo_params, capsys):
    """The real `dvc metrics show --json` over the headline of every study of params.yaml and
    polyfit's: ≤ 40 keys in all (a `dvc exp show` column each), every study's decided count
    among them, no key in two files (DVC would head its column with the file's path)."""
    import subprocess
    import sys

    from ablations import polyfit
    from dvc.utils.flatten import flatten

    rng = np.random.default_rng(0)
    for study in repo_params.studies:
        _fake_default_study(tmp_path, repo_params, study, rng)
        models = tmp_path / "models" / study
        rounds = replay_rounds(repo_params, study, models, tmp_path / "data")  # as evaluate does
        units = read_study(repo_params, study, models, tmp_path / "data",
                           rounds and rounds["allocation"])
        write_json(tmp_path / "metrics" / f"{study}.json",
                   headline(study_results(repo_params, study, units, tmp_path / "data", rounds)))
    write_json(tmp_path / "metrics" / "polyfit.json",
               polyfit.headline({"chosen_degree_min": 15, "chosen_degree_1se": 3}))
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    targets = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "metrics").iterdir())
    shown = json.loads(subprocess.run([*dvc, "metrics", "show", "--json", *targets],
                                      cwd=tmp_path, capture_output=True, text=True,
                                      check=True).stdout)[""]["data"]
    keys = [key for path in targets for key in flatten(shown[path]["data"])]
    with capsys.disabled():
        print(f"\n{len(keys)} headline keys: {' '.join(keys)}")
    assert len(keys) <= 40 and len(set(keys)) == len(keys)
    assert {f"{study}.decided" for study in repo_params.studies} <= set(keys)
    assert {"batchnorm.bn", "depth.deeper", "transfer.finetune"} <= set(keys)


def test_budget_sentence_names_a_seed_range_and_the_budgets_note(repo_params):
    """A range-seeded study rests on a span of seeds; a budget's stand-in network is said
    (the laptop's ResNet-8 for optimizers, none in the notebook budget)."""
    from ablations.convergence import budget_sentence

    note = repo_params.studies["optimizers"].budget_note
    assert "ResNet-8" in note and "ResNet50" in note
    assert budget_sentence(1600, [3], "3-5", note) == (
        f"These answers rest on 1600 training images, 3 epochs and 3-5 seeds per variant; {note}.")
    assert budget_sentence(500, [2, 10], 1) == (
        "These answers rest on 500 training images, 2-10 epochs and 1 seed per variant.")
    assert load_params(REPO / "params.yaml", budget="notebook").studies["optimizers"].budget_note is None
