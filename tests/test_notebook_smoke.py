"""The notebook budget's whole DAG through the real `dvc repro`, shrunk by the smoke overlay
(conf/overlay/smoke.yaml: a few images per class, 1 epoch, 1 seed): download, weights, split,
standardize, train, evaluate, plot and report of every notebook study, Xception included.

The test writes tiny archives in the real formats (CIFAR-10 binary tar.gz, MNIST idx.gz,
STL-10 binary tar.gz) and an Xception-shaped .h5 of random weights in the legacy HDF5 layout
of Keras' ImageNet file, and serves them as the mirror, offline. It brings its own registry
entries the way a user adds a dataset: the checksums of its files replace the real ones in the
temporary copy's data/registry.py, and every file is still verified.
"""

import gzip
import hashlib
import html
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from ablations.data.registry import DATASETS, WEIGHTS
from conftest import copy_project, offline, run_ok

COPIED = ("src", "conf", "dvc.yaml", "networks", "params.yaml", "pyproject.toml", ".dvc/config",
          ".dvc/plots", ".dvcignore", ".gitignore")
PER_CLASS = {"train": 10, "test": 4}  # images per class in the tiny archives
NOTEBOOK_STUDIES = ("batchnorm", "bn_placement", "init_reg", "optimizers", "depth", "xception",
                    "transfer", "lenet_bn_dropout")


def balanced_labels(split: str, rng) -> np.ndarray:
    return rng.permutation(np.arange(10 * PER_CLASS[split]) % 10).astype(np.uint8)


def images(n: int, shape: tuple, rng) -> np.ndarray:
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cifar10(folder: Path, rng) -> None:
    """cifar-10-binary.tar.gz: records of a label byte, then the R, G, B planes (row-major)."""
    train = balanced_labels("train", rng)
    batches = dict(zip([f"data_batch_{i}.bin" for i in range(1, 6)], np.array_split(train, 5)))
    batches["test_batch.bin"] = balanced_labels("test", rng)
    with tarfile.open(folder / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, labels in batches.items():
            planes = images(len(labels), (3, 32, 32), rng).reshape(len(labels), -1)
            add_bytes(tar, f"cifar-10-batches-bin/{name}",
                      np.concatenate([labels[:, None], planes], axis=1).tobytes())


def write_mnist(folder: Path, rng) -> None:
    """The four idx.gz files: big-endian header (magic, dims), then uint8 pixels or labels."""
    for prefix, split in (("train", "train"), ("t10k", "test")):
        labels = balanced_labels(split, rng)
        pixels = images(len(labels), (28, 28), rng)
        for kind, array in (("images-idx3", pixels), ("labels-idx1", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            (folder / f"{prefix}-{kind}-ubyte.gz").write_bytes(
                gzip.compress(header + array.tobytes(), mtime=0))


def write_stl10(folder: Path, rng) -> None:
    """stl10_binary.tar.gz: images channel by channel, column-major; labels 1..10."""
    with tarfile.open(folder / "stl10_binary.tar.gz", "w:gz") as tar:
        for split in ("train", "test"):
            labels = balanced_labels(split, rng)
            add_bytes(tar, f"stl10_binary/{split}_X.bin", images(len(labels), (3, 96, 96), rng).tobytes())
            add_bytes(tar, f"stl10_binary/{split}_y.bin", (labels + 1).tobytes())


def write_xception(path: Path) -> list[np.ndarray]:
    """Keras' Xception backbone (include_top=False), randomly initialized, saved in the layout
    of xception_weights_tf_dim_ordering_tf_kernels_notop.h5; returns its weights."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format  # the writer of that layout

    keras.utils.set_random_seed(5)
    backbone = keras.applications.Xception(weights=None, include_top=False)
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, backbone)
    return backbone.get_weights()


def with_test_checksums(registry: Path, mirror: Path) -> None:
    """The copy's registry verifies this test's files: each real checksum is replaced by the
    one of the file of the same name in the mirror (the real weights' md5 by the stand-in's)."""
    text = registry.read_text()
    for name in ("cifar10", "mnist", "stl10"):
        for file in DATASETS[name].files:
            ours = hashlib.sha256((mirror / name / file.name).read_bytes()).hexdigest()
            assert text.count(file.sha256) == 1
            text = text.replace(file.sha256, ours)
    spec = WEIGHTS["xception_imagenet"]
    ours = hashlib.md5((mirror / "xception_imagenet" / spec.file).read_bytes()).hexdigest()
    registry.write_text(text.replace(spec.md5, ours))


def run(cmd, cwd, env, check=True):
    return run_ok(cmd, cwd, env, timeout=900, check=check)


def copy_repo(repo: Path) -> None:
    copy_project(repo, COPIED)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    repo, mirror = root / "repo", root / "mirror"
    rng = np.random.default_rng(0)
    for name, write in (("cifar10", write_cifar10), ("mnist", write_mnist), ("stl10", write_stl10)):
        (mirror / name).mkdir(parents=True)
        write(mirror / name, rng)
    (mirror / "xception_imagenet").mkdir()
    backbone = write_xception(mirror / "xception_imagenet" / WEIGHTS["xception_imagenet"].file)
    copy_repo(repo)
    with_test_checksums(repo / "src" / "ablations" / "data" / "registry.py", mirror)
    env = {**offline(root / "keras"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "TF_CPP_MIN_LOG_LEVEL": "2", "ABLATIONS_DATA_MIRROR": str(mirror),
           "PYTHONPATH": str(repo / "src"),  # the copy's code, with this test's registry
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(key, None)
    run(["ablations", "compose", "notebook", "--overlay", "smoke"], repo, env)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        run(command, repo, env)
    timings = timed_repro(repo, env)
    print("notebook smoke, seconds per stage (wall, as DVC started them):")
    for stage, seconds in timings.items():
        print(f"  {seconds:6.1f}  {stage}")
    print(f"  {sum(timings.values()):6.1f}  dvc repro, in all")
    return repo, env, timings, backbone


def timed_repro(repo: Path, env) -> dict[str, float]:
    """`dvc repro`, with each stage's wall seconds: from DVC's 'Running stage' line to the
    next one (the last to the end)."""
    starts, lines = [], []
    with subprocess.Popen(["dvc", "repro"], cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Running stage '"):
                starts.append((line.split("'")[1], time.monotonic()))
    end = time.monotonic()
    assert process.returncode == 0, "".join(lines)[-8000:]
    return {stage: (starts[i + 1][1] if i + 1 < len(starts) else end) - start
            for i, (stage, start) in enumerate(starts)}


def test_every_stage_of_the_notebook_budget_ran(smoke):
    import yaml

    repo, _, _, _ = smoke
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    expected = {"validate", "report", "polyfit", "weights@xception_imagenet",
                *(f"download@{name}" for name in ("cifar10", "mnist", "stl10"))}
    expected |= {f"{stage}@{study}" for stage in ("train", "evaluate")
                 for study in NOTEBOOK_STUDIES}
    prepared = yaml.safe_load((repo / "params.yaml").read_text())["data"]["prepared"]
    expected |= {f"{stage}@{data}" for stage in ("split", "standardize") for data in prepared}
    assert set(lock) == expected
    record = json.loads((repo / "data/prepared/weights/xception_imagenet/weights.json").read_text())
    file = repo / "data/prepared/weights/xception_imagenet" / WEIGHTS["xception_imagenet"].file
    assert record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert "sha256: null" not in (repo / "params.yaml").read_text()


def test_every_study_has_results_a_report_section_and_a_run_per_unit(smoke):
    import mlflow

    repo, _, _, _ = smoke
    report = (repo / "reports" / "index.html").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    from ablations.config import load_params

    shrunk = load_params(repo / "params.yaml")
    for study in NOTEBOOK_STUDIES:
        results = json.loads((repo / "results" / f"{study}.json").read_text())
        variants = shrunk.studies[study].variants
        assert set(results["variants"]) == set(variants), study
        for name in variants:
            accuracy = results["variants"][name]["test_accuracy"]
            assert accuracy["n"] == 1 and 0.0 <= accuracy["mean"] <= 1.0, (study, name)
        assert f'<section id="{html.escape(study)}"><h2>' in report, study
        experiment = client.get_experiment_by_name(study)
        runs = client.search_runs([experiment.experiment_id], "tags.variant != ''")
        units = {(r.data.tags["variant"], r.data.tags["seed"]) for r in runs
                 if r.info.status == "FINISHED" and "seed" in r.data.tags}
        first = shrunk.studies[study].first_seeds()[0]  # seeds may be a list or a range
        assert units == {(name, str(first)) for name in variants}


def _model(repo: Path, study: str, variant: str):
    import keras

    return keras.saving.load_model(repo / "models" / study / variant / "seed0" / "model.keras",
                                   safe_mode=True)


def test_mnist_to_stl10_transfer_copied_and_froze_what_its_plan_says(smoke):
    from ablations.config import load_params
    from ablations.models.zoo import transfer_plan

    repo, _, _, _ = smoke
    params = load_params(repo / "params.yaml")
    source = _model(repo, "transfer", "source")
    assert source.input_shape[1:] == (28, 28, 1)  # MNIST
    for name in ("frozen", "finetune"):
        cfg = params.variant("transfer", name)
        target = _model(repo, "transfer", name)
        assert target.input_shape[1:] == (96, 96, 3)  # STL-10
        plan = transfer_plan(source, target, cfg)
        copied = {layer for layer, _, rule in plan if rule == "copied"}
        assert {"block1_conv", "block2_conv", "head"} & copied == (
            {"block1_conv", "block2_conv", "head"} if cfg.copy_head else {"block1_conv", "block2_conv"})
        for layer in copied:
            same = all(np.array_equal(a, b) for a, b in zip(
                target.get_layer(layer).get_weights(), source.get_layer(layer).get_weights()))
            assert target.get_layer(layer).trainable is (not cfg.freeze), (name, layer)
            if cfg.freeze:  # fixed since the copy: still the source's weights
                assert same, (name, layer)
        adapters = [layer for layer in target.layers if layer.name.startswith("adapt")]
        assert adapters and all(layer.trainable for layer in adapters)  # trained from scratch


def test_xception_backbone_is_the_provisioned_weights_unchanged_by_training(smoke):
    repo, _, _, backbone = smoke
    model = _model(repo, "xception", "frozen-imagenet")
    trained = model.get_layer("xception")
    assert not trained.trainable
    weights = trained.get_weights()
    assert len(weights) == len(backbone)
    assert all(np.array_equal(a, b) for a, b in zip(weights, backbone))  # BN statistics too
    assert model.get_layer("head").trainable


def test_offline_without_a_mirror_the_download_stage_is_one_error_line(tmp_path):
    """What a GPU box without internet or mirror sees first: the stage's own command."""
    copy_repo(tmp_path)
    env = {**offline(tmp_path / "keras"), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run(["ablations", "compose", "notebook"], tmp_path, env)
    for dataset in ("cifar10", "mnist"):  # an archive; four files (the stage stops at the first)
        result = run(["ablations", "download", dataset, "--out", f"data/raw/{dataset}"], tmp_path,
                     env, check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr
        assert result.stderr.rstrip().splitlines()[-1] == errors[0]  # the last line, alone
        for file in DATASETS[dataset].files:
            assert file.name in errors[0]
        assert f"<mirror>/{dataset}/" in errors[0] and "ABLATIONS_DATA_MIRROR" in errors[0]
        assert not (tmp_path / "data" / "raw" / dataset).exists()
