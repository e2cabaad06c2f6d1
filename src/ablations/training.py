"""train stage: fit every (variant, seed) unit of a study in one process, log each to MLflow.

Per unit, in models/<study>/<variant>/seed<k>/ (see ablations.units for which units run):
model.keras, history.csv (one row per epoch), test_predictions.npy (predicted class per test
image), bn_params.npz (gamma/beta of every BatchNorm layer, if any) and run.json (MLflow run
id, fingerprint, fit seconds, test loss/accuracy, divergence, whether MLflow holds all of it).
Test metrics are computed here, with the model in memory, so no later stage imports Keras.

The checkpoint folder lives outside the outputs: an interrupted training resumes from its
last backup (SparseBackup). A tracking outage does not stop training: after the first failed
MLflow call (one warning line) MLflow is skipped for that unit, its run.json says
`"tracking_complete": false` and `ablations replay` (replay.py) completes the MLflow run later.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import ablations.models  # noqa: F401,I001 (first: it imports Keras without its unused extras)
import keras
import numpy as np

from ablations import heap, tracking
from ablations.config import Variant
from ablations.data.prepare import load_prepared
from ablations.history import FIELDS, read_history, read_steps, write_history, write_steps
from ablations.io import atomic_dir, read_json, write_json
from ablations.layout import DatasetFolder, UnitFolder
from ablations.models.blocks import build_optimizer
from ablations.models.zoo import build_model, transfer_weights
from ablations.units import Unit


class SparseBackup(keras.callbacks.Callback):
    """Keras' BackupAndRestore (weights, optimizer state and the epoch to resume at), saving an
    epoch's end only when `seconds` have passed since the last save, and always at the end of
    training (see executors.backup_seconds). `saved_epoch`: the epochs the backup holds (None
    before the first epoch)."""

    def __init__(self, folder: Path, seconds: float):
        super().__init__()
        # Two backups kept, so a kill -9 during a write falls back to the previous one.
        self.keras_backup = keras.callbacks.BackupAndRestore(
            str(folder), delete_checkpoint=False, double_checkpoint=True)
        self.seconds = seconds
        self.saved_epoch: int | None = None
        self.done_epoch, self.saved_at = 0, 0.0

    def set_model(self, model):
        super().set_model(model)
        self.keras_backup.set_model(model)

    def on_train_begin(self, logs=None):
        self.keras_backup.on_train_begin(logs)  # restores the backup, if any
        self.saved_at = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        if self.saved_epoch is None:  # `epoch` epochs are done per the restored backup
            self.saved_epoch = self.done_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.done_epoch = epoch + 1
        if time.monotonic() - self.saved_at >= self.seconds:
            self._save(logs)

    def on_train_end(self, logs=None):
        if self.saved_epoch is not None and self.saved_epoch < self.done_epoch:
            self._save(logs)

    def _save(self, logs) -> None:
        self.keras_backup.on_epoch_end(self.done_epoch - 1, logs)
        self.saved_epoch, self.saved_at = self.done_epoch, time.monotonic()


class EpochRecorder(keras.callbacks.Callback):
    """The one place epochs are logged: a row in history.csv and MLflow metrics with step=epoch,
    once `backup` holds the epoch (so neither ever holds an epoch a resume would redo).

    Epochs are numbered from 1 (epoch 1 = after one pass over the training data).
    """

    def __init__(self, history_path: Path, run_id: str, guard: tracking.Guard,
                 backup: SparseBackup):
        super().__init__()
        self.history_path, self.backup = history_path, backup
        self.run_id, self.guard = run_id, guard
        self.started: float | None = None  # perf_counter at the current epoch's start
        self.pending: list[dict] = []  # rows of epochs the backup does not hold yet

    def on_epoch_begin(self, epoch, logs=None):
        if self.started is None:  # first epoch of this process, maybe a resumed one
            # `epoch` epochs are done per the backup: drop rows of epochs it never saved.
            rows = [row for row in read_history(self.history_path) if row["epoch"] <= epoch]
            write_history(self.history_path, rows)
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, "epoch_seconds": time.perf_counter() - self.started}
        row.update({key: float(logs[key]) for key in FIELDS[1:-1] if key in logs})
        self.pending.append(row)
        self._record_saved()

    def on_train_end(self, logs=None):  # after the backup's final save (callback order)
        self._record_saved()

    def _record_saved(self) -> None:
        saved = [row for row in self.pending if row["epoch"] <= (self.backup.saved_epoch or 0)]
        if not saved:
            return
        self.pending = self.pending[len(saved):]
        write_history(self.history_path, [*read_history(self.history_path), *saved])
        self.guard(f"after epoch {saved[-1]['epoch']}", tracking.log_epochs, self.run_id, saved)


# Images per inference call (test set, in-epoch validation): no gradients are kept, so a call
# costs only activations, and fewer calls cost less per image than training-size batches.
PREDICT_BATCH = 512


class StepValidator(keras.callbacks.Callback):
    """Validation accuracy `per_epoch` times per epoch and before the first step, on a fixed
    validation subset, with the seconds spent inside training steps so far: the rows of
    steps.csv (history.STEP_FIELDS). Predicted chunk by chunk, not through `evaluate`, which
    would reset the compiled metrics of the running epoch.
    A resumed training drops rows past the epoch the backup restored."""

    def __init__(self, path: Path, x_val, y_val, steps_per_epoch: int, per_epoch: int):
        super().__init__()
        self.path, self.x_val, self.y_val = path, x_val, y_val
        self.steps_per_epoch = steps_per_epoch
        self.every = max(1, steps_per_epoch // per_epoch)
        self.rows: list[dict] | None = None  # None until the first epoch of this process
        self.step, self.seconds, self.started = 0, 0.0, 0.0

    def _accuracy(self) -> float:
        correct = 0
        for start in range(0, len(self.y_val), PREDICT_BATCH):
            # predict_on_batch: inference without gradient tracking (torch.no_grad on torch)
            probabilities = self.model.predict_on_batch(self.x_val[start:start + PREDICT_BATCH])
            predicted = np.argmax(probabilities, axis=-1)
            correct += int(np.sum(predicted == self.y_val[start:start + PREDICT_BATCH]))
        return correct / len(self.y_val)

    def _record(self) -> None:
        self.rows.append({"step": self.step, "epoch": self.step / self.steps_per_epoch,
                          "val_accuracy": self._accuracy(), "train_seconds": self.seconds})
        write_steps(self.path, self.rows)

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:
            self.step = epoch * self.steps_per_epoch
            self.rows = [r for r in read_steps(self.path) if r["step"] <= self.step]
            self.seconds = self.rows[-1]["train_seconds"] if self.rows else 0.0
            if not self.rows:
                self._record()  # step 0 (or a resumed run without rows): the starting point

    def on_train_batch_begin(self, batch, logs=None):
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds += time.perf_counter() - self.started
        self.step += 1
        if (batch + 1) % self.every == 0 or batch + 1 == self.steps_per_epoch:
            self._record()


class EpochBatches(keras.utils.PyDataset):
    """Training batches whose order is a function of (seed, epoch) alone.

    Keras' own `shuffle=True` draws from a random stream that restarts with the process, so a
    resumed training would see other batches than an uninterrupted one; this order does not
    depend on how many epochs this process has run.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.order = np.random.default_rng([self.seed, epoch]).permutation(len(self.y))

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __getitem__(self, index: int):
        # Sorted rows of a random batch: same batch, sequential reads of a memory-mapped file
        # (and the order within a batch, hence every sum over it, stays what it was).
        rows = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        return self.x[rows], self.y[rows]


def _tf_epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """EpochBatches in tf.data (TensorFlow's own data path): on CPU a Python batch generator
    costs ~25% of TensorFlow's training throughput, this costs nothing measurable."""
    import tensorflow as tf

    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # read each time an epoch starts
    images, labels = tf.constant(x), tf.constant(y)  # one in-memory copy, like Keras' own
    seeds = tf.constant([seed], tf.int64)

    def order(_):
        return tf.random.experimental.stateless_shuffle(
            tf.range(len(y)), seed=tf.concat([seeds, [epoch.read_value()]], 0))

    dataset = (tf.data.Dataset.from_tensors(0).map(order).unbatch().batch(batch_size)
               .map(lambda rows: (tf.gather(images, rows), tf.gather(labels, rows)))
               .apply(tf.data.experimental.assert_cardinality(math.ceil(len(y) / batch_size)))
               .prefetch(tf.data.AUTOTUNE))
    return dataset, epoch.assign


def epoch_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """(training data for `fit`, set_epoch(epoch)): batches in an order fixed by (seed, epoch)."""
    if keras.backend.backend() == "tensorflow":
        return _tf_epoch_batches(x, y, batch_size, seed)
    batches = EpochBatches(x, y, batch_size, seed)
    return batches, batches.set_epoch


class EpochRandomness(keras.callbacks.Callback):
    """Makes everything random in an epoch a function of (seed, epoch): the batch order and the
    dropout masks. A resumed training then repeats an uninterrupted one bit for bit, although
    the backup holds neither the batch order nor the layers' random-stream states."""

    def __init__(self, set_epoch, seed: int):
        super().__init__()
        self.set_epoch, self.seed = set_epoch, seed

    def on_epoch_begin(self, epoch, logs=None):
        self.set_epoch(epoch)
        # Random layers (Dropout …) draw from a keras.random.SeedGenerator: state = [seed, count].
        streams = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, stream in enumerate(streams):
            start = np.random.default_rng([self.seed, epoch, index]).integers(2**31)
            stream.assign(np.array([start, 0], dtype=stream.dtype))
        # Unseeded Dropout on torch draws from torch's global generator instead: reseed the
        # backend's global state per (seed, epoch) too (python, numpy and the backend).
        keras.utils.set_random_seed(int(np.random.default_rng([self.seed, epoch]).integers(2**31)))


def _keep_tensorflow_unimported() -> None:
    """Keras imports TensorFlow wherever it is installed, whatever the backend: to seed tf.random
    in set_random_seed and to recognise tf.TensorShape when saving. That import is a large
    share of a small study's time, for nothing: on torch or jax no TensorFlow object exists until
    something imports TensorFlow. So Keras' lazy TensorFlow handle is told it is unavailable."""
    if keras.backend.backend() != "tensorflow" and "tensorflow" not in sys.modules:
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False  # noqa: SLF001 (what `available` caches)


_keep_tensorflow_unimported()  # once per process, before any model is built


def _seed_everything(seed: int) -> None:
    """Same seed, same machine → same metrics (op determinism costs little on CPU)."""
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def _compiled_model(cfg: Variant, arrays: dict[str, np.ndarray], num_classes: int,
                    source: Path | None) -> tuple[keras.Model, list[dict]]:
    """The compiled model and the layers transfer copied into it (see transfer_weights)."""
    # float16 compute on GPUs that have it; variables and the loss stay float32.
    keras.config.set_dtype_policy("mixed_float16" if cfg.mixed_precision else "float32")
    model = build_model(cfg, tuple(arrays["x_train"].shape[1:]), num_classes)
    copied = []
    if source is not None:  # transfer: every layer but the head from the source unit's model
        copied = transfer_weights(keras.saving.load_model(UnitFolder(source).model, safe_mode=True),
                                  model, cfg)
    model.compile(
        optimizer=build_optimizer(cfg, math.ceil(len(arrays["y_train"]) / cfg.batch_size)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model, copied


def _fit(model, cfg: Variant, arrays, checkpoint: Path, run_id: str, guard: tracking.Guard,
         backup_seconds: float) -> tuple[float, dict]:
    """Train with resume-from-backup; return seconds spent in `fit` and, with early stopping,
    whether it stopped early and the best epoch (1-based; its weights are kept if
    restore_best_weights). A resumed training restarts the patience count."""
    batches, set_epoch = epoch_batches(arrays["x_train"], arrays["y_train"], cfg.batch_size, cfg.seed)
    backup = SparseBackup(UnitFolder(checkpoint).backup, backup_seconds)
    callbacks = [  # the backup before the recorder, which records only what the backup holds
        EpochRandomness(set_epoch, cfg.seed),
        backup,
        EpochRecorder(UnitFolder(checkpoint).history, run_id, guard, backup),
        keras.callbacks.TerminateOnNaN(),
    ]
    if cfg.val_per_epoch > 1:
        subset = slice(0, cfg.val_subset)
        callbacks.append(StepValidator(
            UnitFolder(checkpoint).steps, arrays["x_val"][subset], arrays["y_val"][subset],
            math.ceil(len(arrays["y_train"]) / cfg.batch_size), cfg.val_per_epoch))
    stopper = None
    if cfg.early_stopping is not None:  # after the recorder: every epoch run is in history.csv
        stopper = keras.callbacks.EarlyStopping(**cfg.early_stopping.model_dump())
        callbacks.append(stopper)
    started = time.perf_counter()
    model.fit(
        batches,
        validation_data=(arrays["x_val"], arrays["y_val"]),
        epochs=cfg.epochs, validation_batch_size=cfg.batch_size,
        shuffle=False,  # the batches are shuffled already, reproducibly (EpochRandomness)
        callbacks=callbacks, verbose=2,
    )
    stopped = {} if stopper is None else {
        "stopped_early": stopper.stopped_epoch > 0, "best_epoch": stopper.best_epoch + 1}
    return time.perf_counter() - started, stopped


def _resume_run_id(checkpoint: Path) -> str | None:
    state = UnitFolder(checkpoint).run_json
    return read_json(state)["run_id"] if state.exists() else None


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def test_results(model: keras.Model, arrays, batch_size: int) -> tuple[dict[str, float | None], np.ndarray]:
    """(test loss and accuracy, predicted class per test image) from one pass over the test set."""
    probabilities = np.asarray(model.predict(arrays["x_test"], batch_size=batch_size, verbose=0),
                               dtype=np.float64)
    labels = np.asarray(arrays["y_test"])
    predicted = probabilities.argmax(axis=1).astype(np.int16)
    picked = probabilities[np.arange(len(labels)), labels]
    loss = float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))  # Keras' clipping epsilon
    accuracy = float(np.mean(predicted == labels))
    return {"test_loss": _finite_or_none(loss), "test_accuracy": accuracy}, predicted


def bn_parameters(model: keras.Model) -> dict[str, np.ndarray]:
    """{"<layer>/gamma": …, "<layer>/beta": …} of every BatchNormalization layer, nested ones too."""
    found = {}
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001 (Keras' own walk)
        if isinstance(layer, keras.layers.BatchNormalization):
            for name in ("gamma", "beta"):
                weight = getattr(layer, name)
                if weight is not None:
                    found[f"{layer.name}/{name}"] = keras.ops.convert_to_numpy(weight)
    return found


def layer_list(model: keras.Model) -> dict[str, list[dict]]:
    """The network a unit trains, layer by layer (an ablation's variant, in MLflow)."""
    return {"layers": [{"name": layer.name, "class": type(layer).__name__,
                        "params": layer.count_params()} for layer in model.layers]}


def _num_classes(data_dir: Path, arrays) -> int:
    return len(DatasetFolder(data_dir).class_names(int(np.max(arrays["y_train"])) + 1))


def train_unit(study: str, unit: Unit, arrays: dict[str, np.ndarray], parent_id: str | None,
               backup_seconds: float) -> str:
    """Fit one (variant, seed) and write its outputs into `unit.out`; return its MLflow run id
    (a child of `parent_id`, the study's run). A backup at most every `backup_seconds`."""
    cfg, checkpoint = unit.cfg, unit.checkpoint
    checkpoint.mkdir(parents=True, exist_ok=True)
    keras.backend.clear_session()  # drop the previous unit's graph and layer names
    _seed_everything(cfg.seed)
    model, copied = _compiled_model(cfg, arrays, _num_classes(unit.data_dir, arrays), unit.source)
    run_id = tracking.start_run(study, unit.name, tracking.train_tags(study, unit.variant, cfg.seed),
                                run_id=_resume_run_id(checkpoint), parent_id=parent_id)
    write_json(UnitFolder(checkpoint).run_json, {"run_id": run_id})
    guard = tracking.Guard(
        f"training goes on, results are kept in {unit.out}; once the server is back run: "
        f"ablations replay {study} {unit.variant} --seed {cfg.seed} --data {unit.data_dir.parent} "
        f"--out {unit.out}")
    try:
        guard("before training", tracking.log_params, run_id, cfg.model_dump())
        guard("before training", tracking.log_datasets, run_id, unit.data_dir)
        if copied:
            guard("before training", tracking.log_transfer, run_id, copied, cfg.init_from)
        if cfg.is_own_or_ablated():
            guard("before training", tracking.log_dict, run_id, layer_list(model), "layers.json")
        fit_seconds, stopped = _fit(model, cfg, arrays, checkpoint, run_id, guard, backup_seconds)
        history = read_history(UnitFolder(checkpoint).history)
        # Fewer epochs than `epochs` without early stopping: TerminateOnNaN ended the training.
        cut_short = len(history) < cfg.epochs and not stopped.get("stopped_early")
        diverged = any(not math.isfinite(row["loss"]) for row in history) or cut_short
        test, predictions = test_results(model, arrays, max(cfg.batch_size, PREDICT_BATCH))
        guard("after training", tracking.log_result, run_id, history, fit_seconds, diverged)
        guard("after testing", tracking.log_metrics, run_id, {"epochs_run": len(history), **test})
        info = {"run_id": run_id, "seed": cfg.seed, "fingerprint": unit.fingerprint,
                "epochs_run": len(history), **stopped,
                "fit_seconds": fit_seconds, "diverged": diverged, **test,
                **({"transfer": {"from": cfg.init_from, "layers": copied}} if copied else {})}
        _save_outputs(model, unit.out, checkpoint, info, predictions)
        guard("while logging the model", tracking.log_model, model, run_id)
        guard("while ending the run", tracking.end_run, run_id)
    except BaseException:  # a crash or Ctrl-C: the run is FAILED (a resume makes it RUNNING)
        guard("while ending the failed run", tracking.end_run, run_id, "FAILED")
        raise
    if guard.ok:
        tracking.mark_complete(UnitFolder(unit.out).run_json)
    shutil.rmtree(checkpoint)  # done: the next training of this unit starts afresh
    return run_id


# Up to this many bytes, a prepared dataset is read into memory once per train process (as a
# notebook's np.load would) and shared by its units, instead of every batch, validation pass
# and test pass reading pages of the memory-mapped files; larger datasets stay memory-mapped.
IN_MEMORY_MAX_BYTES = 2 * 2**30


def _arrays(data_dir: Path) -> dict[str, np.ndarray]:
    arrays = load_prepared(data_dir)
    if sum(array.nbytes for array in arrays.values()) > IN_MEMORY_MAX_BYTES:
        return arrays
    return {name: np.array(array) for name, array in arrays.items()}  # same values, in memory


def train_study(study: str, todo: list[Unit], backup_seconds: float) -> list[str]:
    """Train `todo` (the units that are not current), in order: transfer sources come first;
    each backed up at most every `backup_seconds` (executors.backup_seconds)."""
    arrays_of: dict[Path, dict[str, np.ndarray]] = {}  # per prepared dataset, shared by the units
    run_ids = []
    # Every unit's clear_session runs gc.collect(), which walks all of torch's, Keras' and
    # MLflow's module objects, a cost paid per unit. Freezing what exists now (after
    # the imports, before any model) leaves only the units' own objects to walk.
    with heap.frozen():
        parent_id = tracking.study_run_id(study)
        for index, unit in enumerate(todo, start=1):
            print(f"train {study} {unit.name} ({index}/{len(todo)})", flush=True)
            if unit.data_dir not in arrays_of:
                arrays_of[unit.data_dir] = _arrays(unit.data_dir)
            run_ids.append(train_unit(study, unit, arrays_of[unit.data_dir], parent_id,
                                      backup_seconds))
    return run_ids


def _save_outputs(model, out: Path, checkpoint: Path, info: dict, predictions: np.ndarray):
    """DVC outputs first (before model logging), so a tracking outage loses no training.
    run.json says tracking_complete false until MLflow holds the whole run."""
    state = UnitFolder(checkpoint)
    with atomic_dir(out) as tmp:
        unit = UnitFolder(tmp)
        model.save(unit.model)
        shutil.copyfile(state.history, unit.history)
        if state.steps.exists():
            shutil.copyfile(state.steps, unit.steps)
        np.save(unit.predictions, predictions)
        bn = bn_parameters(model)
        if bn:
            np.savez(unit.bn_params, **bn)
        write_json(unit.run_json, {**info, "tracking_complete": False})
