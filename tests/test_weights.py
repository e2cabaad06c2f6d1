"""Pretrained weights are provisioned like datasets: mirror, then Keras' cache, then the URL,
each copy checked against the sha256 pinned in params (offline: files this test writes)."""

import hashlib
import subprocess
import sys

import pytest
import yaml

from ablations.data.formats import PRETRAINED_FILES
from ablations.data.sources import fetch_weights
from ablations.errors import DataError
from conftest import REPO

NAME = "xception_imagenet"
FILE = PRETRAINED_FILES[NAME]
GOOD = b"HDF5 stand-in: the real weights"


@pytest.fixture
def sources(tmp_path):
    """(mirror, cache, server folder, sha256): one good copy in each, a bad one in the mirror."""
    folders = {name: tmp_path / name for name in ("mirror", "cache", "server")}
    for folder in folders.values():
        folder.mkdir()
        (folder / FILE).write_bytes(GOOD)
    return folders, hashlib.sha256(GOOD).hexdigest()


def fetch(tmp_path, folders, sha256, **kwargs):
    return fetch_weights(NAME, tmp_path / "out", sha256, mirror=kwargs.get("mirror"),
                         system_dirs=[kwargs.get("cache", tmp_path / "nowhere")],
                         base_url=kwargs.get("base_url", "file:///nonexistent/"),
                         allow_download=kwargs.get("allow_download", True))


def test_mirror_first_then_cache_then_url(tmp_path, sources, capfd):
    folders, sha256 = sources
    assert fetch(tmp_path, folders, sha256, mirror=folders["mirror"]).read_bytes() == GOOD
    assert f"verified copy from {folders['mirror'] / FILE}" in capfd.readouterr().err
    (tmp_path / "out" / FILE).unlink()
    (folders["mirror"] / FILE).write_bytes(b"truncated")  # rejected: the cache is next
    assert fetch(tmp_path, folders, sha256, mirror=folders["mirror"],
                 cache=folders["cache"]).read_bytes() == GOOD
    assert "rejected" in capfd.readouterr().err
    (tmp_path / "out" / FILE).unlink()
    url = folders["server"].as_uri() + "/"  # Keras' URL, here a local file:// server
    assert fetch(tmp_path, folders, sha256, base_url=url).read_bytes() == GOOD
    assert f"verified copy from {url}{FILE}" in capfd.readouterr().err


def test_a_file_nowhere_is_one_error_naming_where_to_put_it(tmp_path, sources):
    folders, sha256 = sources
    with pytest.raises(DataError, match=rf"Put the file\(s\) {FILE} in <mirror>/{NAME}/"):
        fetch(tmp_path, folders, sha256, mirror=tmp_path / "empty", allow_download=False)
    assert not (tmp_path / "out").exists()


def test_unpinned_weights_name_keras_md5(tmp_path, sources):
    folders, _ = sources
    with pytest.raises(DataError, match=rf"data.weights.{NAME}.sha256: required .* md5 "
                                        "only.*file_hash='b0042744bf5b25fce3cb969f33bebb97'"):
        fetch(tmp_path, folders, None, mirror=folders["mirror"])


def test_weights_stage_command_and_its_variant(tmp_path, sources):
    """`ablations weights` (the dvc.yaml stage) with the pin from params; the mirror in params."""
    folders, sha256 = sources
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(mirror=str(folders["mirror"]), weights={NAME: {"sha256": sha256}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "data" / "prepared" / "weights" / NAME
    result = subprocess.run([sys.executable, "-m", "ablations.cli", "--params",
                             str(tmp_path / "params.yaml"), "weights", NAME, "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / FILE).read_bytes() == GOOD
    from ablations.units import weights_file

    assert weights_file(tmp_path / "data" / "prepared", NAME) == out / FILE  # what train loads


def test_a_variant_naming_weights_trains_from_the_provisioned_file(tmp_path):
    from ablations.config import load_params
    from ablations.units import plan
    from conftest import write_params

    path = write_params(tmp_path, ["scratch", "pretrained"], model="xception", conv_filters=[],
                        overrides={"pretrained": {"weights": NAME, "freeze": True}})
    raw = yaml.safe_load(path.read_text())
    raw["data"]["weights"] = {NAME: {"sha256": "ab" * 32}}
    path.write_text(yaml.safe_dump(raw))
    (tmp_path / "prepared" / "d").mkdir(parents=True)
    units = {u.variant: u for u in plan(load_params(path), "unit", tmp_path / "prepared",
                                        tmp_path / "out", tmp_path / "ckpt")}
    pretrained = units["pretrained"].cfg
    assert pretrained.weights_file == str(tmp_path / "prepared" / "weights" / NAME / FILE)
    assert pretrained.weights_sha256 == "ab" * 32 and units["scratch"].cfg.weights_file is None
