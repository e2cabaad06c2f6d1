"""evaluate stage: a study's numbers over seeds — DVC metrics, the full results, the curves —
and one MLflow summary run. Numbers only: the same stage then draws the figures (plots.py).

Reads what the train stage wrote for every (variant, seed) — run.json, history.csv,
test_predictions.npy — never the models (no Keras import: this stage takes seconds). Writes
  --results  the study's full results (keys below; the figures and the report read them),
  --metrics  the study's headline, its DVC metrics file (`headline`: the best variant and
             its accuracy, how many answers are decided of how many, a few answers'
             differences): a handful of `dvc exp show` columns however many variants it has,
  --curves   every history in long format (history.write_curves), DVC's plot data,
  --accuracy per variant: mean test accuracy ± 95% half-width (DVC's plot data, bars),
and logs the headline numbers and the results to the `<study>-summary` MLflow run.

results/<study>.json — every "result" is {mean, ci, n, excluded, values}: the mean over
seeds, the half-width of its 95% Student-t interval (null with one value), n finite values
used, `excluded` values that were null/NaN (diverged, or target never reached) and the
per-seed values {"seed0": …}:
  study, question, data (the study's prepared dataset), baseline, seeds (every seed trained),
      target_val_accuracy, confidence (0.95)
  sequential (a study whose seeds are a range; null otherwise: ablations.sequential): the
      rounds train ran, replayed from its units — method (the procedure in words), looks,
      looks_planned, confidence_per_look (the decisions' confidence), allocation (seeds per
      variant); every decision's method ends with the procedure
  variants.<name>: data (what it trained and was tested on), seeds (count), diverged
      (count), test_accuracy, test_loss, fit_seconds, epochs_to_target and seconds_to_target
      (results over the seeds that reached the target, plus reached / of: how many of the
      seeds reached it; a seed that never did is null), steps_to_target and
      train_seconds_to_target (where it validated within epochs), convergence (end-of-training slope
      of validation accuracy and still_improving; ablations.convergence)
  bn_speedup.<bn variant>: twin (same resolved config but no BatchNorm), epochs_ratio,
      seconds_ratio (results of the per-seed ratios twin ÷ BN, paired by seed, over the seeds
      where both reached the target; the interval is a t-interval of those ratios), and
      where the variants validated within epochs (steps.csv) steps_ratio and
      train_seconds_ratio (steps and seconds inside training steps, interpolated),
      bn_only_reached (seeds where only the BN variant reached it: a speed-up beyond measure)
  margin: the study's equivalence margin (points of test accuracy)
  decisions: one per question-level answer (ablations.decisions: answer, kind, decision —
      better / worse / equivalent / undecided — difference, interval at its Holm level,
      margin, seeds, method, variants, p_value, seeds_to_decide, would_decide);
      decided: {decided, answers}, how many of them are not undecided
  comparisons.<name> (variants tested on the study's data, a transfer source is not):
      vs (the baseline), difference_points and ci_points (test accuracy, percentage
      points, 95% t-interval of the per-seed differences), n (seeds paired), judgement
      (of that interval alone: better / worse / not distinguishable / null with one seed),
      decision (where the comparison is an answer), text (one sentence: the decision's
      where it is an answer)
  pair_comparisons.<a vs b>: the same for each pair of the study's `also_compare` (a − b)
  effects: main, simple, interaction (factorial studies) and pairs (ablations.effects:
      difference and ci in points, n, per_seed, the variants each rests on)
  effect_rows: the effects flat (kind, label, difference, ci, n, shown) for tables and the
      forest plot; details: the detail behind the decisions, one sentence each (effects
      within each setting, interactions, answers resting on a variant still improving at the
      end); budget: train_images, epochs, seeds
  best_variant (highest mean test accuracy on the study's data), summary (what the
      decisions rest on: best variant, diverged runs, budget), verdict (the decisions, one
      sentence each, then the summary)
  confusion (best variant, predictions of its non-diverged seeds pooled): variant, seeds
      (how many pooled), classes (names), counts (rows: true class, columns: predicted)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from ablations import convergence, decisions, effects, sequential, stats, tracking, verdicts
from ablations.config import Params
from ablations.errors import DataError
from ablations.history import curve_rows, read_history, read_steps, write_curves
from ablations.io import atomic_file, read_json, write_json
from ablations.layout import DatasetFolder, UnitFolder
from ablations.stats import format_result as pm


def epochs_to_target(history: list[dict[str, float]], target: float
                     ) -> tuple[int | None, float | None]:
    """(epochs, wall seconds of training) until val_accuracy first reaches `target`."""
    seconds = 0.0
    for row in history:
        seconds += row["epoch_seconds"]
        if row["val_accuracy"] >= target:
            return row["epoch"], seconds
    return None, None


def steps_to_target(steps: list[dict[str, float]], target: float
                    ) -> tuple[float | None, float | None]:
    """(training steps, seconds inside training steps) until val_accuracy first reaches
    `target`, linearly interpolated between the two evaluations around the crossing."""
    for before, row in zip([None, *steps], steps):
        if row["val_accuracy"] < target:
            continue
        if before is None:
            return row["step"], row["train_seconds"]
        share = (target - before["val_accuracy"]) / (row["val_accuracy"] - before["val_accuracy"])
        return tuple(before[key] + share * (row[key] - before[key])
                     for key in ("step", "train_seconds"))
    return None, None


# --------------------------------------------------------------------------- reading


def read_unit(models_dir: Path, study: str, variant: str, seed: int, y_test: np.ndarray) -> dict:
    """One training's outputs: run.json + history + test predictions (checked against y_test)."""
    unit = UnitFolder.of(models_dir, variant, seed)
    unit.require(unit.run_json, unit.history, unit.predictions, stage=f"train@{study}")
    predictions = np.load(unit.predictions, allow_pickle=False)
    if predictions.shape != y_test.shape:
        raise DataError(f"{unit.predictions}: {predictions.shape[0]} predictions "
                        f"for {y_test.shape[0]} test images; retrain {variant}")
    return {**read_json(unit.run_json), "seed": seed, "history": read_history(unit.history),
            "steps": read_steps(unit.steps), "predictions": predictions}


def read_test_labels(data_dir: Path) -> np.ndarray:
    dataset = DatasetFolder(Path(data_dir))
    dataset.require(dataset.y("test"))
    return np.load(dataset.y("test"), allow_pickle=False)


# --------------------------------------------------------------------------- numbers


def variant_metrics(units: list[dict], target: float, data: str) -> dict[str, Any]:
    labels = [f"seed{u['seed']}" for u in units]
    reached = [epochs_to_target(u["history"], target) for u in units]

    def result(values):
        return stats.summary(values, labels)

    return {
        "data": data,
        "seeds": len(units),
        "diverged": sum(bool(u["diverged"]) for u in units),
        "test_accuracy": result(u["test_accuracy"] for u in units),
        "test_loss": result(u["test_loss"] for u in units),
        "fit_seconds": result(u["fit_seconds"] for u in units),
        "epochs_run": result(len(u["history"]) for u in units),  # < epochs: stopped early
        "epochs_to_target": {**result(e for e, _ in reached),
                             "reached": sum(e is not None for e, _ in reached), "of": len(units)},
        "seconds_to_target": result(s for _, s in reached),
        "convergence": convergence.convergence([u["history"] for u in units]),
        **_step_metrics(units, target, result),
    }


def _step_metrics(units: list[dict], target: float, result) -> dict[str, Any]:
    """Steps and seconds inside training steps to the target, where the variant validated
    within epochs (steps.csv); {} otherwise."""
    if not any(u.get("steps") for u in units):
        return {}
    reached = [steps_to_target(u.get("steps") or [], target) for u in units]
    return {"steps_to_target": {**result(s for s, _ in reached),
                                "reached": sum(s is not None for s, _ in reached),
                                "of": len(units)},
            "train_seconds_to_target": result(t for _, t in reached)}


def bn_twins(params: Params, study: str) -> dict[str, str]:
    """{variant with BatchNorm: its twin}: the variant whose resolved config is identical but
    for norm: none and input_norm: false."""
    configs = {name: params.variant(study, name).model_dump()
               for name in params.studies[study].variants}
    twins = {}
    for name, config in configs.items():
        without = {**config, "norm": "none", "input_norm": False}
        if without == config:
            continue
        match = [other for other, other_config in configs.items() if other_config == without]
        if match:
            twins[name] = match[0]
    return twins


def speedup(with_bn: dict, without: dict) -> dict[str, Any]:
    """Per-seed ratios twin ÷ BN (paired by seed: same data order and initial seed)."""
    out: dict[str, Any] = {}
    for key, name in (("epochs_to_target", "epochs_ratio"), ("seconds_to_target", "seconds_ratio"),
                      ("steps_to_target", "steps_ratio"),
                      ("train_seconds_to_target", "train_seconds_ratio")):
        if key not in with_bn or key not in without:
            continue  # step resolution only where both validated within epochs
        bn_values, twin_values = with_bn[key]["values"], without[key]["values"]
        ratios = {seed: (twin_values[seed] / value if value and twin_values.get(seed) else None)
                  for seed, value in bn_values.items()}
        out[name] = stats.summary(ratios.values(), ratios.keys())
    bn_epochs = with_bn["epochs_to_target"]["values"]
    twin_epochs = without["epochs_to_target"]["values"]
    out["bn_only_reached"] = sum(v is not None and twin_epochs.get(s) is None
                                 for s, v in bn_epochs.items())
    return out


def speedup_ratios(speedups: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """The BN pairs the speed-up answer rests on, as decisions.decide_study takes them: per BN
    variant measured in training steps (its study validates within epochs, as batchnorm does
    to ask about the speed-up), the per-seed ratios without BN ÷ with BN. Whole epochs (2-4 in
    a laptop study) are too coarse a unit to decide on — a ratio is 2/1 or 3/2 — so those
    pairs stay in the speed-up table only."""
    return {f"{bn} vs {s['twin']}": {"variants": [bn, s["twin"]],
                                      "values": s["steps_ratio"]["values"]}
            for bn, s in speedups.items() if "steps_ratio" in s}


def speedup_label(target: float) -> str:
    """The speed-up answer: one per study, over every BN pair (decisions.ratio_estimate)."""
    return f"BN speed-up: training steps to {target:g} validation accuracy, without ÷ with BN"


def accuracies(variants: dict[str, dict]) -> effects.Values:
    """{variant: {"seed0": test accuracy, …}}: what every effect is computed from."""
    return {name: v["test_accuracy"]["values"] for name, v in variants.items()}


def comparison(name: str, baseline: str, variants: dict[str, dict],
               decided: dict[str, Any] | None = None) -> dict[str, Any]:
    """Test accuracy of `name` minus the baseline's, in percentage points, with its 95%
    interval (paired by seed). Where the comparison is one of the question's answers
    (`decided`, ablations.decisions), its `decision` and its words are the decision's."""
    effect = effects.contrast(accuracies(variants), {name: 1.0, baseline: -1.0})
    text = (verdicts.decision_sentence(decided) if decided
            else verdicts.difference_sentence(name, baseline, effect))
    out = {"vs": baseline, "difference_points": effect["difference"],
           "ci_points": effect["ci"], "n": effect["n"], "judgement": effect["judgement"],
           "text": text + convergence.caveat([name, baseline], _flags(variants))}
    if decided:
        out["decision"] = decided["decision"]
    return out


def _flags(variants: dict[str, dict]) -> dict[str, dict]:
    return {name: v["convergence"] for name, v in variants.items()}


def study_effects(params: Params, study: str, variants: dict[str, dict]) -> dict[str, Any]:
    """Main, simple and interaction effects of a factorial study, and the pairs its question
    names: each variant against the baseline where the study has no factors, and `also_compare`."""
    spec = params.studies[study]
    values = accuracies(variants)
    out: dict[str, Any] = {}
    if spec.factors:
        out.update(effects.factorial_effects(values, spec.levels(),
                                             decisions.reference_levels(spec)))
    out["pairs"] = effects.pair_effects(values, decisions.question_pairs(spec))
    return out


def study_details(found: dict[str, Any], variants: dict[str, dict],
                  decided: list[dict[str, Any]]) -> list[str]:
    """What lies behind the decisions, one sentence each: every factor level's effect within
    each setting of the others, every interaction, and each answer resting on a variant that
    was still improving at the end of training."""
    flags = _flags(variants)
    out = []
    for main in found.get("main", []):
        simple = [e for e in found["simple"]
                  if (e["factor"], e["level"]) == (main["factor"], main["level"])]
        if len(simple) > 1:
            out.append(verdicts.within_settings_sentence(main, simple))
    out += [verdicts.interaction_sentence(e) + convergence.caveat(e["variants"], flags)
            for e in found.get("interaction", [])]
    out += [f"{d['answer']}{caveat}" for d in decided
            if (caveat := convergence.caveat(d["variants"], flags))]
    return out


def best_variant(variants: dict[str, dict], data: str) -> str | None:
    """Highest mean test accuracy among the variants tested on the study's data."""
    scored = {n: v["test_accuracy"]["mean"] for n, v in variants.items()
              if v["test_accuracy"]["mean"] is not None and v["data"] == data}
    return max(scored, key=scored.get) if scored else None


# --------------------------------------------------------------------------- verdict


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def study_summary(metrics: dict[str, Any]) -> str:
    """What the decisions rest on, from the numbers only: the best variant, diverged runs, the
    budget."""
    variants, baseline, best = metrics["variants"], metrics["baseline"], metrics["best_variant"]
    if best is None:
        return "No variant produced a finite test accuracy."
    acc = variants[best]["test_accuracy"]
    parts = [f"Best mean test accuracy: {best}, {pm(acc, 100)} % over {_seeds(acc['n'])}."]
    if best == baseline:
        parts.append(f"That is the baseline: no variant has a higher mean than {baseline}.")
    diverged = [f"{n} ({v['diverged']} of {_seeds(v['seeds'])})" for n, v in variants.items()
                if v["diverged"]]
    if diverged:
        parts.append("Diverged: " + ", ".join(diverged) + ".")
    if metrics["budget"]["text"]:
        parts.append(metrics["budget"]["text"])
    return " ".join(parts)


def decisions_sentence(decided: list[dict[str, Any]]) -> str:
    """"2 of 3 answers decided (Holm …). a: better, …. b: …." ("" without answers)."""
    if not decided:
        return ""
    count = decisions.counts(decided)
    models = dict.fromkeys(d["method"].partition("; Holm")[0] for d in decided
                           if "additivity" in d or "additive model" in d["method"])
    return (f"{count['decided']} of {count['answers']} answers decided "
            f"({decisions.HOLM} over the study's answers at {stats.CONFIDENCE:.0%}). "
            + " ".join(verdicts.decision_sentence(d) + "." for d in decided)
            + "".join(f" Main effects from the {model}." for model in models))


def study_verdict(metrics: dict[str, Any]) -> str:
    """The study's answer: the decisions, then what they rest on."""
    return " ".join(filter(None, [decisions_sentence(metrics["decisions"]), metrics["summary"]]))


# --------------------------------------------------------------------------- headline


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


HEADLINE = ("best", "acc", "decided", "answers")  # every study's headline keys, in this order
# A study headlines the difference of each comparison with its baseline only when it makes at
# most this many (bn_placement, depth, transfer): with optimizers' 3 and init_reg's 10 the
# default studies would pass 40 DVC columns. Those stay in the results file, as do the
# `also_compare` pairs (where both sides are headlined, their difference is the difference of
# the two columns: means of per-seed differences subtract) and the speed-up ratios.
HEADLINE_PAIRS = 2


def headline_answers(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{short key: decision} of the answers a study headlines: the main effect of every
    two-level factor (key: its level, or factor-level where two factors share a level's name)
    and, in a study comparing at most HEADLINE_PAIRS variants with its baseline, each of those
    comparisons (key: the variant)."""
    by_answer = {d["answer"]: d for d in metrics["decisions"]}
    mains = metrics["effects"].get("main", [])
    factors = [m["factor"] for m in mains]
    two_level = [m for m in mains if factors.count(m["factor"]) == 1]
    levels = [m["level"] for m in two_level]
    out = {(m["level"] if levels.count(m["level"]) == 1 else f"{m['factor']}-{m['level']}"):
           by_answer[effects.effect_label(m)] for m in two_level
           if effects.effect_label(m) in by_answer}
    pairs = [d for d in metrics["decisions"]
             if d["kind"] == "pair" and d["variants"][1] == metrics["baseline"]]
    if len(pairs) <= HEADLINE_PAIRS:
        out.update((d["variants"][0], d) for d in pairs)
    if clash := sorted(set(out) & set(HEADLINE)):
        raise DataError(f"studies.{metrics['study']}: {clash[0]} is a headline key; rename that "
                        "variant or level")
    return out


def headline(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{study: keys}: the study's headline, its DVC metrics file. `best`: the variant of the
    highest mean test accuracy, `acc`: that accuracy in %; `decided` of `answers`: how many of
    the question-level answers are decided (ablations.decisions); then per headlined answer
    (headline_answers) its difference in percentage points. Nested under the study's name, so
    every key is unique across the studies: `dvc exp show` heads its column `depth.deeper`
    rather than `metrics/depth.json:deeper`. Decision words stay in the results file: DVC
    shows a string (`dvc metrics diff` its old and new, no change), but a word beside each
    difference would double those columns, and `decided` moves when a decision does. A number
    that does not exist (no finite accuracy) is left out; DVC shows "-".
    """
    best = metrics["best_variant"]
    keys = {"best": best,
            "acc": _percent(metrics["variants"][best]["test_accuracy"]["mean"]) if best else None,
            **metrics["decided"]}
    keys.update((key, d["difference"]) for key, d in headline_answers(metrics).items())
    return {metrics["study"]: {key: value for key, value in keys.items() if value is not None}}


def accuracy_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant: mean test accuracy ± its 95% half-width in % over n seeds (DVC plot data:
    a bar per variant)."""
    return [{"variant": name, "acc": _percent(v["test_accuracy"]["mean"]),
             "acc_ci": _percent(v["test_accuracy"]["ci"]), "n": v["test_accuracy"]["n"]}
            for name, v in metrics["variants"].items()]


def best_confusion(params: Params, study: str, units: dict[str, list[dict]], best: str | None,
                   data_dir: Path) -> dict[str, Any] | None:
    """Confusion counts of the best variant, its non-diverged seeds' predictions pooled (all
    seeds when every one diverged)."""
    if best is None:
        return None
    best_data = Path(data_dir) / params.variant_data(study, best)
    y_test = read_test_labels(best_data)
    kept = [u["predictions"] for u in units[best] if not u["diverged"]] or \
           [u["predictions"] for u in units[best]]
    classes = DatasetFolder(best_data).class_names(int(y_test.max()) + 1)
    counts = confusion_counts(np.concatenate([y_test] * len(kept)), np.concatenate(kept),
                              len(classes))
    return {"variant": best, "seeds": len(kept), "classes": classes, "counts": counts.tolist()}


def confusion_counts(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[i, j]: test images of class i predicted as j — what scikit-learn's
    confusion_matrix(labels=range(classes)) returns (tests/test_evaluate.py compares them),
    without importing scikit-learn in every evaluate process (about 0.9 s each)."""
    pairs = truth.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


# --------------------------------------------------------------------------- stage


def read_study(params: Params, study: str, models_dir: Path, data_dir: Path,
               allocation: sequential.Allocation | None = None) -> dict[str, list[dict]]:
    """{variant: [unit per seed]} (a sequential study: the seeds of `allocation`); each
    variant's predictions are checked against the test labels of the data it trained on (a
    transfer source trains on other data)."""
    spec = params.studies[study]
    labels: dict[str, np.ndarray] = {}  # per prepared dataset: variants mostly share one
    units = {}
    for name in spec.variants:
        data = params.variant_data(study, name)
        if data not in labels:
            labels[data] = read_test_labels(Path(data_dir) / data)
        units[name] = [read_unit(models_dir, study, name, seed, labels[data])
                       for seed in spec.seeds_of(name, allocation)]
    return units


def study_decisions(params: Params, study: str, variants: dict[str, dict],
                    bn_speedup: dict[str, dict]) -> list[dict[str, Any]]:
    """The study's answers decided (decisions.decide_study) at its per-look confidence
    (sequential.look_confidence: 95 % for a list of seeds)."""
    spec = params.studies[study]
    return decisions.decide_study(
        spec, accuracies(variants), sequential.look_confidence(spec, stats.CONFIDENCE),
        speedup_ratios(bn_speedup),
        speedup_label(spec.target_val_accuracy))


def _variants_and_speedups(params: Params, study: str, units: dict[str, list[dict]]
                           ) -> tuple[dict[str, dict], dict[str, dict]]:
    spec = params.studies[study]
    variants = {name: variant_metrics(runs, spec.target_val_accuracy,
                                      params.variant_data(study, name))
                for name, runs in units.items()}
    bn_speedup = {bn: {"twin": twin, **speedup(variants[bn], variants[twin])}
                  for bn, twin in bn_twins(params, study).items()}
    return variants, bn_speedup


def round_decisions(params: Params, study: str, models_dir: Path, data_dir: Path,
                    allocation: sequential.Allocation) -> list[dict[str, Any]]:
    """A sequential study's decisions on the units of one round (the train stage calls this
    after each round; evaluate replays the rounds with it)."""
    units = read_study(params, study, Path(models_dir), Path(data_dir), allocation)
    return study_decisions(params, study, *_variants_and_speedups(params, study, units))


def replay_rounds(params: Params, study: str, models_dir: Path, data_dir: Path
                  ) -> dict[str, Any] | None:
    """A sequential study's rounds as the train stage ran them, from the trained units:
    {method, looks, looks_planned, confidence_per_look, allocation}; None for a list of
    seeds. A unit the rounds need but train did not leave is one error naming the stage."""
    spec = params.studies[study]
    if not spec.sequential:
        return None
    allocation, _, taken = sequential.run_rounds(
        spec, lambda counts: round_decisions(params, study, models_dir, data_dir, counts))
    return {"method": sequential.method(spec, stats.CONFIDENCE), "looks": taken,
            "looks_planned": sequential.looks(spec),
            "confidence_per_look": sequential.look_confidence(spec, stats.CONFIDENCE),
            "allocation": allocation}


def study_budget(params: Params, study: str, train_images: int | None,
                 seeds: list[int]) -> dict[str, Any]:
    """Training images (of the study's data), epochs and seeds (per variant: `seeds`, the
    counts; a sequential study spends them unevenly) every answer rests on."""
    spec = params.studies[study]
    epochs = sorted({params.variant(study, name).epochs for name in spec.variants
                     if params.variant_data(study, name) == spec.data})
    fewest, most = min(seeds), max(seeds)
    count = fewest if fewest == most else f"{fewest}-{most}"
    out = {"train_images": train_images, "epochs": epochs, "seeds": count}
    out["text"] = convergence.budget_sentence(train_images, epochs, count, spec.budget_note) \
        if train_images is not None else ""
    return out


def count_train_images(data_dir: Path, data: str) -> int | None:
    path = DatasetFolder(Path(data_dir) / data).y("train")
    return int(np.load(path, mmap_mode="r").shape[0]) if path.exists() else None


def study_metrics(params: Params, study: str, units: dict[str, list[dict]],
                  train_images: int | None = None,
                  rounds: dict[str, Any] | None = None) -> dict[str, Any]:
    """`rounds`: a sequential study's replay_rounds (None: a list of seeds)."""
    spec = params.studies[study]
    variants, bn_speedup = _variants_and_speedups(params, study, units)
    metrics = {
        "study": study, "question": spec.question, "data": spec.data, "baseline": spec.baseline,
        "seeds": sorted({u["seed"] for runs in units.values() for u in runs}),
        "target_val_accuracy": spec.target_val_accuracy,
        "confidence": stats.CONFIDENCE, "variants": variants,
        "bn_speedup": bn_speedup, "sequential": rounds,
        "margin": spec.margin,
        "best_variant": best_variant(variants, spec.data),
        "effects": study_effects(params, study, variants),
        "budget": study_budget(params, study, train_images, [len(runs) for runs in units.values()]),
    }
    metrics["decisions"] = study_decisions(params, study, variants, bn_speedup)
    if rounds is not None and rounds["method"]:  # valid under the rounds' optional stopping
        for d in metrics["decisions"]:
            d["method"] = f"{d['method']}; sequential: {rounds['method']}"
    metrics["decided"] = decisions.counts(metrics["decisions"])
    answered = {d["answer"]: d for d in metrics["decisions"] if d["kind"] == "pair"}

    def compare(a: str, b: str) -> dict[str, Any]:
        return comparison(a, b, variants, answered.get(f"{a} − {b}"))

    # Only variants tested on the study's data are compared (a transfer source is not).
    metrics["comparisons"] = {name: compare(name, spec.baseline) for name in variants
                              if name != spec.baseline and variants[name]["data"] == spec.data}
    metrics["pair_comparisons"] = {f"{a} vs {b}": compare(a, b) for a, b in spec.also_compare}
    metrics["details"] = study_details(metrics["effects"], variants, metrics["decisions"])
    metrics["effect_rows"] = verdicts.effect_rows(metrics["effects"])  # tables, forest plot
    metrics["summary"] = study_summary(metrics)
    metrics["verdict"] = study_verdict(metrics)
    return metrics


def _summary_metrics(metrics: dict) -> dict[str, float]:
    """The headline numbers as MLflow metrics of the summary run (comparable across runs)."""
    flat = {}
    for name, v in metrics["variants"].items():
        for key in ("test_accuracy", "epochs_to_target", "seconds_to_target"):
            if v[key]["mean"] is not None:
                flat[f"{name}.{key}_mean"] = v[key]["mean"]
    for name, s in metrics["bn_speedup"].items():
        for key in ("epochs_ratio", "seconds_ratio", "steps_ratio", "train_seconds_ratio"):
            if s.get(key, {}).get("mean") is not None:
                flat[f"{name}.bn_speedup_{key}"] = s[key]["mean"]
    flat["answers"], flat["answers_decided"] = (metrics["decided"]["answers"],
                                                metrics["decided"]["decided"])
    return flat


def study_results(params: Params, study: str, units: dict[str, list[dict]], data_dir: Path,
                  rounds: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results file's content: study_metrics and the best variant's confusion counts."""
    metrics = study_metrics(params, study, units,
                            count_train_images(data_dir, params.studies[study].data), rounds)
    metrics["confusion"] = best_confusion(params, study, units, metrics["best_variant"], data_dir)
    return metrics


def study_histories(units: dict[str, list[dict]]) -> dict[str, dict[int, list[dict]]]:
    """{variant: {seed: history}}, what the curves file holds."""
    return {name: {u["seed"]: u["history"] for u in runs} for name, runs in units.items()}


def log_summary(study: str, metrics: dict) -> str:
    """One `<study>-summary` run: headline metrics (answers and answers_decided among
    them), the results file, the verdict as the run's description (the figures are logged in
    their own run, plots.log_figures); the study's run gets one tag per decision."""
    tags = tracking.run_tags(study, "summary", kind="summary", dvc_stage=f"evaluate@{study}")
    tags["mlflow.note.content"] = metrics["verdict"]  # shown as the run's description in the UI
    study_run = tracking.study_run_id(study)
    tracking.tag_decisions(study_run, {d["answer"]: verdicts.decision_sentence(d)
                                       for d in metrics["decisions"]},
                           f"{metrics['decided']['decided']} of {metrics['decided']['answers']}")
    with tracking.run(study, f"{study}-summary", tags, parent_id=study_run) as run_id:
        tracking.log_metrics(run_id, _summary_metrics(metrics))
        tracking.log_dict(run_id, metrics, f"{study}.json")
        return run_id


def write_accuracy(path: Path, rows: list[dict[str, Any]]) -> None:
    """The per-variant accuracy CSV (accuracy_rows); a missing number is an empty cell."""
    with atomic_file(Path(path)) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows(rows)


def evaluate_study(params: Params, study: str, models_dir: Path, data_dir: Path,
                   results_path: Path, metrics_path: Path, curves_path: Path,
                   accuracy_path: Path) -> dict[str, Any]:
    """The evaluate stage: results JSON + headline metrics + curves + per-variant accuracy +
    MLflow summary run; returns the results. `data_dir` holds every prepared dataset
    (data/prepared)."""
    models_dir, data_dir = Path(models_dir), Path(data_dir)
    rounds = replay_rounds(params, study, models_dir, data_dir)  # None: a list of seeds
    units = read_study(params, study, models_dir, data_dir, rounds and rounds["allocation"])
    metrics = study_results(params, study, units, data_dir, rounds)
    keys = headline(metrics)  # before any write: a bad key leaves nothing half-written
    write_curves(Path(curves_path), curve_rows(study_histories(units)))
    write_accuracy(Path(accuracy_path), accuracy_rows(metrics))
    write_json(Path(metrics_path), keys, sort_keys=False)  # best, acc, … as columns
    write_json(Path(results_path), metrics)
    log_summary(study, metrics)
    return metrics
