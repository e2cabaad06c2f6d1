"""Complete the MLflow run of one unit (variant × seed) from its DVC outputs, without
retraining: the `replay` command, run by hand after a tracking outage (not a DVC stage).

Outage → replay: when the tracking server stops during `ablations train`, training goes on.
The first failed MLflow call prints one warning line, MLflow is not called again by that
training, and the outputs (model.keras, history.csv, run.json with "tracking_complete": false)
are written as usual: the stage exits 0 and DVC caches it. The MLflow run stays RUNNING with
whatever it received before the outage. Once the server is back, replay logs what the run lacks
(epoch metrics, params, dataset inputs, fit_seconds, diverged, the model), marks it FINISHED
and rewrites run.json with "tracking_complete": true; `dvc commit -f train@<study>` then records
that edit (an output changed behind DVC's back makes `dvc repro` re-run the stage). Replay is
idempotent: a second one logs nothing. If run.json's run is not in the store (another
MLFLOW_TRACKING_URI, a deleted run), a new run with the usual tags receives everything.
"""

from __future__ import annotations

from pathlib import Path

from ablations import tracking
from ablations.config import Variant
from ablations.errors import AblationsError
from ablations.history import read_history
from ablations.io import read_json
from ablations.layout import UnitFolder


def replay(study: str, variant: str, cfg: Variant, out: Path, data_dir: Path) -> str:
    """Log into MLflow what the run of `out` lacks (its prepared dataset `data_dir` among its
    inputs); return the run id it went to."""
    unit = UnitFolder(Path(out))
    for path in (unit.run_json, unit.history, unit.model):
        if not path.exists():
            raise AblationsError(f"{path}: missing; run the train stage: dvc repro train@{study}")
    if not Path(data_dir).is_dir():
        raise AblationsError(f"{data_dir}: missing; the unit's prepared data (--data: the "
                             "folder of prepared datasets, as for train): dvc repro standardize")
    info = read_json(unit.run_json)
    tracking.use_experiment(study)  # an unreachable server: `error: …`, exit 2
    run = tracking.find_run(info["run_id"])
    if run is None:
        run = tracking.find_run(tracking.start_run(
            study, f"{variant}/seed{cfg.seed}", tracking.train_tags(study, variant, cfg.seed),
            parent_id=tracking.study_run_id(study)))
        print(f"run {info['run_id']} is not in {tracking.tracking_uri()}: "
              f"created run {run.info.run_id} for {study}@{variant}")
    run_id = run.info.run_id

    params = _log_params(run, cfg)
    datasets = tracking.log_missing_datasets(run, Path(data_dir))
    history = read_history(unit.history)
    metrics = tracking.log_result(run_id, history, info["fit_seconds"], info["diverged"])
    new_model = not tracking.has_model(run)
    if new_model:  # Keras only here, to read the model back
        import keras

        tracking.log_model(keras.saving.load_model(unit.model, safe_mode=True), run_id)
    if run.info.status != "FINISHED":  # only then: ending it again would move its end time
        tracking.end_run(run_id)
    if not info.get("tracking_complete") or info["run_id"] != run_id:
        tracking.mark_complete(unit.run_json, run_id)
        print(f"{unit.run_json}: tracking_complete; record it with "
              f"`dvc commit -f train@{study}` (else dvc repro re-runs the stage)")
    print(f"replay {study}@{variant} → run {run_id}: {metrics} metric values, {params} params, "
          f"{datasets} dataset inputs, model {'logged' if new_model else 'already logged'}; "
          "run FINISHED")
    return run_id


def _log_params(run, cfg: Variant) -> int:
    """Log the params the run lacks. A param MLflow holds with another value means params.yaml
    changed since training: the model is not that config's, so refuse (MLflow would too)."""
    logged = run.data.params
    params = tracking.flatten(cfg.model_dump())
    changed = sorted(key for key, value in params.items() if logged.get(key, value) != value)
    if changed:
        raise AblationsError(
            f"run {run.info.run_id} was trained with "
            + ", ".join(f"{key}={logged[key]}" for key in changed)
            + f" but params.yaml now says {', '.join(f'{k}={params[k]}' for k in changed)}: "
            "retrain (dvc repro) instead of replaying")
    missing = {key: value for key, value in params.items() if key not in logged}
    if missing:
        tracking.log_params(run.info.run_id, missing)
    return len(missing)
