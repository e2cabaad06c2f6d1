"""The pipeline against the loop a user would write in a notebook instead (issue 19).

For one study, in a throw-away git + DVC copy of the project (bench/_project.py) whose data is
prepared once before timing:
- bare: one Python process on the pipeline's Keras backend; per (variant, seed) unit: seed,
  build the same model, compile it with the same optimizer, `model.fit` on the arrays in
  memory (Keras' own shuffling) with what the study's question needs computed during
  training (its in-epoch validation, early stopping), predict the test set, save the model;
  then a figure of the study (the pipeline's evaluate stage draws the study's figures).
  No DVC, no MLflow, no checkpoints, no resume.
- pipeline: `dvc repro train@<study> evaluate@<study>` after removing the study's models and
  checkpoints (the stages' own commands, validation, tracking and resume machinery included),
  as issue 19 measured it; the MLflow store, created before timing, keeps every pair's runs.
Each pair runs both modes back to back (the order alternates from pair to pair, the pipeline
first: a range-seeded study's bare loop trains the units the pipeline's rounds ended with, read
from its results, so both do the same work); printed per
pair and as medians over pairs: wall ÷ wall, Σ fit ÷ Σ fit (fit seconds as each mode measures
its own `model.fit`), and peak RSS of each mode's largest process. All times in seconds, RSS in
MiB. Figures go to stdout (and --json), never into assertions: on a shared 2-core machine a
single pair varies by ±15 %.

--all (issue 26): every default study, polyfit and a figure per study in one bare process
against the whole default `dvc repro` from raw data, wall and CPU ratios and where the extra
seconds go per stage kind (bench/whole_run.py; with --shrink as a smoke test).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import whole_run
from _project import copy_project, environment, sh, shrink
from tax import fit_seconds, reuse_raw

# Runs a command, then prints its descendants' peak RSS and CPU seconds (the worker's included).
RUSAGE = [sys.executable, str(Path(__file__).with_name("_rusage.py"))]


def _args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="batchnorm")
    parser.add_argument("--all", action="store_true",
                        help="every default study, polyfit and figures against the whole "
                             "default `dvc repro` from raw data (bench/whole_run.py)")
    parser.add_argument("--repeat", type=int, default=3, help="bare/pipeline pairs")
    parser.add_argument("--shrink", action="store_true", help="a few hundred images, 1 epoch")
    parser.add_argument("--project", type=Path, help="build the copy here and keep it")
    parser.add_argument("--json", action="store_true", help="also print one JSON object")
    parser.add_argument("--bare-epoch-validation-only", action="store_true",
                        help="bare loop without the study's in-epoch validation (val_per_epoch): "
                             "what the notebooks themselves compute")
    parser.add_argument("--bare-without-tensorflow", action="store_true",
                        help="bare loop with Keras told TensorFlow is unavailable, as the "
                             "pipeline's train process does (Keras imports it when installed)")
    parser.add_argument("--mode", choices=("bare", "bare-all"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)  # bare: where models go
    return parser.parse_args(argv)


def step_validation(x_val, y_val, steps_per_epoch: int, per_epoch: int):
    """What a notebook measuring the speed-up in steps would add when the study asks for it
    (val_per_epoch > 1): accuracy on the validation subset before the first step and
    `per_epoch` times per epoch, as the pipeline's StepValidator computes it."""
    import keras
    import numpy as np

    every, accuracies = max(1, steps_per_epoch // per_epoch), []

    def record(model):
        predicted = np.argmax(model.predict_on_batch(x_val), axis=-1)
        accuracies.append(float(np.mean(predicted == y_val)))

    class StepAccuracy(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            record(self.model)

        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % every == 0 or batch + 1 == steps_per_epoch:
                record(self.model)

    return StepAccuracy()


def pipeline_allocation(study: str) -> dict[str, int] | None:
    """The seeds per variant the pipeline's rounds ended with (results/<study>.json), so that a
    range-seeded study's bare loop trains the same units; None before any pipeline run (a
    range's first seeds) or for a list of seeds. Same params give the same rounds."""
    import yaml

    folder = yaml.safe_load(Path("dvc.yaml").read_text())["vars"][0]["results"]
    path = Path(folder) / f"{study}.json"
    if not path.exists():
        return None
    return (json.loads(path.read_text()).get("sequential") or {}).get("allocation")


def bare_loop(study: str, out: Path, epoch_validation_only: bool, without_tf: bool,
              data_root: Path = Path("data/prepared"), histories: dict | None = None) -> float:
    """The notebook loop over every unit of `study` on the arrays under `data_root`; returns
    Σ seconds inside `model.fit`. `histories`, if given, collects {variant: [History.history]}."""
    import ablations  # noqa: F401 (first: it picks the Keras backend the pipeline runs on)
    import keras
    import numpy as np

    if without_tf:  # importing training keeps TensorFlow out, as in the pipeline's process
        import ablations.training  # noqa: F401

    from ablations.config import load_params
    from ablations.models.blocks import build_optimizer
    from ablations.models.zoo import build_model, transfer_weights

    params = load_params("params.yaml")
    spec, total = params.studies[study], 0.0
    print(f"bare loop on Keras' {keras.backend.backend()} backend", file=sys.stderr)
    for variant, seed in spec.units(pipeline_allocation(study)):
        cfg = params.variant(study, variant, seed)
        folder = data_root / (cfg.data or spec.data)
        x, y = np.load(folder / "x_train.npy"), np.load(folder / "y_train.npy")
        val = (np.load(folder / "x_val.npy"), np.load(folder / "y_val.npy"))
        x_test = np.load(folder / "x_test.npy")
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        shape, classes = params.input_shape(cfg.data or spec.data)
        model = build_model(cfg, shape, classes)
        if cfg.init_from:  # a notebook would copy the pretrained layers too
            source = keras.saving.load_model(out / cfg.init_from / f"seed{seed}.keras")
            transfer_weights(source, model, cfg)
        steps = -(-len(y) // cfg.batch_size)
        model.compile(optimizer=build_optimizer(cfg, steps),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks = []
        if cfg.val_per_epoch > 1 and not epoch_validation_only:
            subset = slice(0, cfg.val_subset)
            callbacks.append(step_validation(val[0][subset], val[1][subset], steps,
                                             cfg.val_per_epoch))
        if cfg.early_stopping is not None:
            callbacks.append(keras.callbacks.EarlyStopping(**cfg.early_stopping.model_dump()))
        started = time.perf_counter()
        fitted = model.fit(x, y, batch_size=cfg.batch_size, epochs=cfg.epochs,
                           validation_data=val, shuffle=True, callbacks=callbacks, verbose=0)
        total += time.perf_counter() - started
        if histories is not None:
            histories.setdefault(variant, []).append(fitted.history)
        model.predict(x_test, batch_size=max(cfg.batch_size, 512), verbose=0)
        (out / variant).mkdir(parents=True, exist_ok=True)
        model.save(out / variant / f"seed{seed}.keras")
    return total


def timed(cmd: list[str], repo: Path) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MiB, stdout, CPU seconds) of `cmd` run in `repo`."""
    started = time.perf_counter()
    done = subprocess.run([*RUSAGE, *cmd], cwd=repo,
                          env=environment(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    kib, cpu = done.stderr.rsplit("rusage", 1)[1].split()[:2]
    return wall, int(kib) / 1024, done.stdout, float(cpu)


def run_bare(repo: Path, study: str, flags: list[str]) -> dict:
    out = repo / "bare-models"
    shutil.rmtree(out, ignore_errors=True)
    wall, rss, stdout, _ = timed([sys.executable, str(Path(__file__).resolve()), "--mode", "bare",
                               "--study", study, "--out", str(out), *flags], repo)
    return {"wall": wall, "fit": float(stdout.strip().splitlines()[-1]), "rss": rss}


def run_pipeline(repo: Path, study: str) -> dict:
    for leftover in (repo / "models" / study, repo / "checkpoints" / study):
        shutil.rmtree(leftover, ignore_errors=True)
    wall, rss, _, _ = timed(["dvc", "repro", f"train@{study}", f"evaluate@{study}"], repo)
    return {"wall": wall, "fit": fit_seconds(repo / "models" / study)[0], "rss": rss}


def prepare(repo: Path, study: str, shrunk: bool) -> None:
    """Project copy with every stage upstream of train@<study> done and its MLflow store
    created (untimed: a project pays them once, not per training of a study). train@<study>
    depends on the whole prepared-data folder, so on every dataset's standardize stage: left
    undone, the first timed pipeline run would split and standardize the other datasets."""
    copy_project(repo, shrink if shrunk else None)
    reuse_raw(repo)
    sh(["dvc", "repro", "validate", "standardize"], repo)
    sh([sys.executable, "-c", f"from ablations import tracking; tracking.use_experiment({study!r})"],
       repo)


def pairs(repo: Path, study: str, repeat: int, bare_flags: list[str]) -> list[dict]:
    rows = []
    for index in range(repeat):
        # pipeline first: its rounds decide a range-seeded study's units (pipeline_allocation)
        order = ("pipeline", "bare") if index % 2 == 0 else ("bare", "pipeline")
        row = {}
        for mode in order:
            row[mode] = (run_bare(repo, study, bare_flags) if mode == "bare"
                         else run_pipeline(repo, study))
        row["wall_ratio"] = row["pipeline"]["wall"] / row["bare"]["wall"]
        row["fit_ratio"] = row["pipeline"]["fit"] / row["bare"]["fit"]
        print(f"pair {index + 1}: pipeline {row['pipeline']['wall']:7.1f} s  bare "
              f"{row['bare']['wall']:7.1f} s  ratio {row['wall_ratio']:.3f} | Σ fit "
              f"{row['pipeline']['fit']:7.1f} / {row['bare']['fit']:7.1f} s  ratio "
              f"{row['fit_ratio']:.3f} | peak RSS {row['pipeline']['rss']:.0f} / "
              f"{row['bare']['rss']:.0f} MiB", flush=True)
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    def median(key, mode=None):
        return statistics.median(row[mode][key] if mode else row[key] for row in rows)

    result = {"pairs": len(rows), "wall_ratio": median("wall_ratio"), "fit_ratio": median("fit_ratio"),
              "wall_ratio_range": [min(r["wall_ratio"] for r in rows), max(r["wall_ratio"] for r in rows)],
              "fit_ratio_range": [min(r["fit_ratio"] for r in rows), max(r["fit_ratio"] for r in rows)],
              "pipeline_wall": median("wall", "pipeline"), "bare_wall": median("wall", "bare"),
              "pipeline_fit": median("fit", "pipeline"), "bare_fit": median("fit", "bare"),
              "pipeline_rss_mib": median("rss", "pipeline"), "bare_rss_mib": median("rss", "bare")}
    # The machine's speed drifts between pairs: the ratio of each mode's median is a second view.
    result["wall_ratio_of_medians"] = result["pipeline_wall"] / result["bare_wall"]
    result["fit_ratio_of_medians"] = result["pipeline_fit"] / result["bare_fit"]
    return result


def run_bare_all(repo: Path, flags: list[str]) -> dict:
    wall, rss, stdout, cpu = timed([sys.executable, str(Path(__file__).resolve()), "--mode",
                                    "bare-all", "--out", str(repo / "bare"), *flags], repo)
    result = {"wall": wall, "rss": rss, "cpu": cpu, **whole_run.bare_result(stdout)}
    result["phases"]["other"] = wall - sum(result["phases"].values())  # Python's start, imports
    return result


def prepare_all(repo: Path, shrunk: bool) -> None:
    """Project copy with the raw data in place (download stages committed) and the MLflow
    store created, untimed; everything else is made inside each timed run."""
    copy_project(repo, shrink if shrunk else None)
    reuse_raw(repo)
    sh([sys.executable, "-c", "from ablations import tracking; tracking.use_experiment('polyfit')"],
       repo)


def pairs_all(repo: Path, repeat: int, bare_flags: list[str], tmp: Path) -> list[dict]:
    rows = []
    for index in range(repeat):
        # pipeline first: its rounds decide a range-seeded study's units (pipeline_allocation)
        order = ("pipeline", "bare") if index % 2 == 0 else ("bare", "pipeline")
        row = {}
        for mode in order:
            row[mode] = (run_bare_all(repo, bare_flags) if mode == "bare"
                         else whole_run.run_pipeline_all(repo, RUSAGE, tmp))
        for key in ("wall", "cpu"):
            row[f"{key}_ratio"] = row["pipeline"][key] / row["bare"][key]
        print(whole_run.pair_line(index + 1, row), flush=True)
        rows.append(row)
    return rows


def report_all(rows: list[dict]) -> dict:
    def median(key, mode=None):
        return statistics.median(row[mode][key] if mode else row[key] for row in rows)

    result = {"pairs": len(rows), "wall_ratio": median("wall_ratio"), "cpu_ratio": median("cpu_ratio"),
              "wall_ratio_range": [min(r["wall_ratio"] for r in rows), max(r["wall_ratio"] for r in rows)],
              "pipeline_wall": median("wall", "pipeline"), "bare_wall": median("wall", "bare"),
              "pipeline_cpu": median("cpu", "pipeline"), "bare_cpu": median("cpu", "bare")}
    print(f"median of {result['pairs']} pairs: whole run wall ratio {result['wall_ratio']:.3f} "
          f"({result['wall_ratio_range'][0]:.3f}–{result['wall_ratio_range'][1]:.3f}; goal ≤ 1.10), "
          f"CPU ratio {result['cpu_ratio']:.3f}; medians: pipeline {result['pipeline_wall']:.1f} s "
          f"wall / {result['pipeline_cpu']:.1f} s CPU, bare {result['bare_wall']:.1f} s wall / "
          f"{result['bare_cpu']:.1f} s CPU")
    print(whole_run.kind_table(rows))
    return result


def main_all(args, bare_flags: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.project or Path(tmp) / "project"
        prepare_all(repo, args.shrink)
        result = report_all(pairs_all(repo, args.repeat, bare_flags, Path(tmp)))
        if args.json:
            print(json.dumps(result))


def main() -> None:
    args = _args()
    if args.mode == "bare":
        histories = {}
        fit = bare_loop(args.study, args.out, args.bare_epoch_validation_only,
                        args.bare_without_tensorflow, histories=histories)
        whole_run.study_figure(args.study, histories, args.out / "figure.png")
        print(fit)
        return
    if args.mode == "bare-all":
        flags = {"epoch_validation_only": args.bare_epoch_validation_only,
                 "without_tf": args.bare_without_tensorflow}
        print(json.dumps(whole_run.bare_all(args.out, bare_loop, flags)))
        return
    bare_flags = [flag for flag, on in (("--bare-epoch-validation-only", args.bare_epoch_validation_only),
                                        ("--bare-without-tensorflow", args.bare_without_tensorflow)) if on]
    if args.all:
        return main_all(args, bare_flags)
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.project or Path(tmp) / "project"
        prepare(repo, args.study, args.shrink)
        result = summary(pairs(repo, args.study, args.repeat, bare_flags))
        print(f"median of {result['pairs']} pairs: wall ratio {result['wall_ratio']:.3f} "
              f"({result['wall_ratio_range'][0]:.3f}–{result['wall_ratio_range'][1]:.3f}; goal "
              f"≤ 1.05), Σ fit ratio {result['fit_ratio']:.3f} ({result['fit_ratio_range'][0]:.3f}–"
              f"{result['fit_ratio_range'][1]:.3f}; goal ≤ 1.03); peak RSS pipeline "
              f"{result['pipeline_rss_mib']:.0f} MiB, bare {result['bare_rss_mib']:.0f} MiB")
        print(f"ratio of the medians: wall {result['pipeline_wall']:.1f} / {result['bare_wall']:.1f} s "
              f"= {result['wall_ratio_of_medians']:.3f}, Σ fit {result['pipeline_fit']:.1f} / "
              f"{result['bare_fit']:.1f} s = {result['fit_ratio_of_medians']:.3f}")
        if args.json:
            print(json.dumps(result))


if __name__ == "__main__":
    main()
