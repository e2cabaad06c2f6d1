"""Pretrained weights are provisioned as Keras provisions them: a mirror copy, then
`keras.utils.get_file` (Keras' cache, then its URL), every copy checked against the md5 Keras
publishes; the file's sha256 is recorded beside it and checked before training loads it.
Offline: the URL is a local file:// folder, the files are written by the tests."""

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest
import yaml

from ablations.data.registry import WEIGHTS
from ablations.data.sources import fetch_weights
from ablations.errors import DataError
from conftest import REPO, offline

NAME = "xception_imagenet"
FILE = WEIGHTS[NAME].file
GOOD = b"HDF5 stand-in: the real weights"


def test_the_registry_holds_the_md5_keras_publishes():
    """The md5 is Keras' own, read from the installed Keras' source, not copied by hand."""
    import keras.src.applications.xception as xception

    source = open(xception.__file__).read()
    assert WEIGHTS[NAME].url == xception.WEIGHTS_PATH_NO_TOP
    assert f'file_hash="{WEIGHTS[NAME].md5}"' in source


@pytest.fixture
def sources(tmp_path):
    """(folders, spec): a good copy in the mirror and on the 'server'; the spec's md5 is the
    good copy's, its URL the server folder's."""
    folders = {name: tmp_path / name for name in ("mirror", "cache", "server")}
    for folder in folders.values():
        folder.mkdir()
    for name in ("mirror", "server"):
        (folders[name] / FILE).write_bytes(GOOD)
    spec = dataclasses.replace(WEIGHTS[NAME], md5=hashlib.md5(GOOD).hexdigest(),
                               url=(folders["server"] / FILE).as_uri())
    return folders, spec


def record(out):
    return json.loads((out / "weights.json").read_text())


def test_mirror_first_then_keras_cache_then_url(tmp_path, sources, capfd):
    folders, spec = sources
    out = tmp_path / "out"
    path = fetch_weights(spec, out, mirror=folders["mirror"], cache_dir=folders["cache"])
    assert path.read_bytes() == GOOD and path == out / FILE
    assert record(out) == {"file": FILE, "md5": spec.md5,
                           "sha256": hashlib.sha256(GOOD).hexdigest()}
    assert f"from {folders['mirror'] / FILE}" in capfd.readouterr().err
    assert not (folders["cache"] / "models").exists()  # the mirror's copy: Keras not asked

    (folders["mirror"] / FILE).write_bytes(b"truncated")  # rejected: Keras' get_file is next,
    fetch_weights(spec, out, mirror=folders["mirror"], cache_dir=folders["cache"])  # downloads
    assert (folders["cache"] / "models" / FILE).read_bytes() == GOOD  # into Keras' cache
    assert "rejected" in capfd.readouterr().err and (out / FILE).read_bytes() == GOOD

    (folders["server"] / FILE).unlink()  # offline now: Keras' cache serves it
    fetch_weights(spec, out, cache_dir=folders["cache"], allow_download=False)
    assert f"from {folders['cache'] / 'models' / FILE}" in capfd.readouterr().err


def test_a_copy_with_another_md5_is_never_used(tmp_path, sources):
    folders, spec = sources
    (folders["server"] / FILE).write_bytes(b"another model's weights")
    with pytest.raises(DataError) as error:
        fetch_weights(spec, tmp_path / "out", cache_dir=folders["cache"])
    assert "md5" in str(error.value) and not (tmp_path / "out").exists()


def test_a_file_nowhere_is_one_error_line_naming_where_to_put_it(tmp_path, sources):
    folders, spec = sources
    spec = dataclasses.replace(spec, url=(tmp_path / "gone" / FILE).as_uri())
    with pytest.raises(DataError) as error:
        fetch_weights(spec, tmp_path / "out", mirror=tmp_path / "empty",
                      cache_dir=folders["cache"])
    message = str(error.value)
    assert "\n" not in message
    assert f"put it in <mirror>/{NAME}/" in message and f"{folders['cache']}/models/" in message
    assert spec.md5 in message and not (tmp_path / "out").exists()


def test_weights_stage_command_and_the_pin_training_checks(tmp_path, sources):
    """`ablations weights` (the dvc.yaml stage), the mirror in params; train takes the sha256
    the stage recorded and refuses the file once it no longer matches."""
    folders, spec = sources
    from ablations.config import load_params
    from ablations.units import plan, weights_file
    from conftest import write_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(folders["mirror"]), weights=[NAME])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "prepared" / "weights" / NAME
    result = subprocess.run([sys.executable, "-m", "ablations.cli", "--params",
                             str(tmp_path / "params.yaml"), "weights", NAME, "--out", str(out)],
                            capture_output=True, text=True, timeout=300,
                            env=offline(tmp_path / "keras"))
    assert result.returncode == 2  # the real registry's md5 is not our stand-in's, and offline
    assert result.stderr.count("error:") == 1 and f"Keras publishes {WEIGHTS[NAME].md5}" in \
        result.stderr and not out.exists()
    fetch_weights(spec, out, mirror=folders["mirror"])  # the same code, this test's entry

    path = write_params(tmp_path, ["scratch", "pretrained"], model="xception", conv_filters=[],
                        overrides={"pretrained": {"weights": NAME, "freeze": True}})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["weights"] = [NAME]
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "prepared" / "d").mkdir(parents=True)
    units = {u.variant: u for u in plan(load_params(path), "unit", tmp_path / "prepared",
                                        tmp_path / "out", tmp_path / "ckpt")}
    pretrained = units["pretrained"].cfg
    assert pretrained.weights_file == str(weights_file(tmp_path / "prepared", NAME)) == str(out / FILE)
    assert pretrained.weights_sha256 == hashlib.sha256(GOOD).hexdigest()
    assert units["scratch"].cfg.weights_file is None

    from ablations.errors import ConfigError
    from ablations.models.zoo import verified_weights

    (out / FILE).write_bytes(b"swapped after the weights stage")  # a later mismatch
    with pytest.raises(ConfigError, match="sha256 is .*, weights_sha256 expects"):
        verified_weights(pretrained.weights_file, pretrained.weights_sha256)
    (out / "weights.json").unlink()
    with pytest.raises(DataError, match=rf"weights.json: missing .*dvc repro weights@{NAME}"):
        plan(load_params(path), "unit", tmp_path / "prepared", tmp_path / "out", tmp_path / "ckpt")
