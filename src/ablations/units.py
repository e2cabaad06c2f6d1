"""What the train stage of a study has to do: one *unit* per (variant, seed), skipped when its
outputs were made from the same config, data and code.

One process trains a whole study, so Keras and its backend are imported once per study rather
than once per variant. DVC re-runs the stage when anything in the study changes; the
fingerprint in each unit's run.json then decides which units actually retrain, so adding a
variant or a seed trains only that one. No Keras import here: a study whose units are all
current finishes without loading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

from ablations.codedeps import closure
from ablations.config import ABLATION_KEYS, NETWORKS_DIR, Network, Params, Variant
from ablations.data.formats import PRETRAINED_FILES, WEIGHTS_DIR
from ablations.errors import ConfigError
from ablations.io import read_json, sha256_file, sha256_files
from ablations.layout import DatasetFolder, UnitFolder

# Code whose change makes every unit retrain: every module training imports, found from the
# imports themselves (dvc.yaml's train deps are checked against the same closure).
TRAINING_CODE = closure("ablations.training")


@dataclass(frozen=True)
class Unit:
    variant: str
    seed: int
    cfg: Variant
    data_dir: Path  # the prepared dataset it trains on
    out: Path  # its outputs: model.keras, history.csv, run.json, …
    checkpoint: Path  # resume state while it trains
    fingerprint: str
    source: Path | None  # outputs of the unit whose weights it starts from (transfer)

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def is_current(self) -> bool:
        run_json = UnitFolder(self.out).run_json
        return run_json.exists() and read_json(run_json).get("fingerprint") == self.fingerprint


@cache
def data_digest(data_dir: Path) -> str:
    """Content hash of a prepared dataset (once per process)."""
    return sha256_files([path for path in DatasetFolder(Path(data_dir)).arrays() if path.exists()])


@cache
def code_digest() -> str:
    return sha256_files(list(TRAINING_CODE))


def network_digest(cfg: Variant) -> str | None:
    """Content hash of a unit's own network: its .keras file, or its builder's module and the
    modules of the networks package that it imports (the walk of codedeps, as for our code).
    Paths are relative to the working directory, the repository root under DVC."""
    network = cfg.model
    if not isinstance(network, Network):
        return None
    if network.file is not None:
        if not Path(network.file).is_file():
            raise ConfigError(f"model.file {network.file}: not found")
        return sha256_file(Path(network.file))
    module = network.builder.split(":")[0]
    files = closure(module, package_dir=Path.cwd() / NETWORKS_DIR)
    if not files:
        raise ConfigError(f"model.builder {network.builder}: no file {network.module_path()}")
    return sha256_files(list(files))


def fingerprint(cfg: Variant, data_dir: Path, source_fingerprint: str | None) -> str:
    """Everything a unit's result depends on: config (seed included), data, training code,
    Keras and its backend, its own network's files, and the unit it starts from."""
    config = cfg.model_dump(mode="json")
    for key in ABLATION_KEYS:  # unset: left out, a zoo unit's config hashes as before they existed
        if not config[key]:
            del config[key]
    inputs = {
        "config": config,
        "data": data_digest(Path(data_dir)),
        "code": code_digest(),
        "keras": version("keras"),
        "backend": os.environ["KERAS_BACKEND"],  # set by `import ablations`
        "source": source_fingerprint,
    }
    network = network_digest(cfg)
    if network is not None:  # absent for the zoo: their units' fingerprints stay as they were
        inputs["network"] = network
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def weights_file(data_root: Path, name: str) -> Path:
    """Where the `weights` stage puts pretrained weights `name` (dvc.yaml: its out)."""
    return data_root / WEIGHTS_DIR / name / PRETRAINED_FILES[name]


def plan(params: Params, study: str, data_root: Path, out: Path, checkpoints: Path,
         only: list[str] | None = None) -> list[Unit]:
    """Every unit of the study (transfer sources first), or only those of the `only` variants
    plus the sources they need."""
    spec = params.studies[study]
    unknown = sorted(set(only or []) - set(spec.variants))
    if unknown:
        raise ConfigError(f"studies.{study}.variants.{unknown[0]}: no such variant "
                          f"(have {sorted(spec.variants)})")
    units: dict[tuple[str, int], Unit] = {}
    for variant, seed in spec.units():
        cfg = params.variant(study, variant, seed)
        if cfg.weights is not None:  # the file the weights stage provisioned, and its pin
            cfg = cfg.model_copy(update={
                "weights_file": str(weights_file(Path(data_root), cfg.weights)),
                "weights_sha256": params.data.weights[cfg.weights].sha256})
        data_dir = Path(data_root) / (cfg.data or spec.data)
        if not data_dir.is_dir():
            raise ConfigError(f"{data_dir}: missing; run `dvc repro standardize` first")
        source = units.get((cfg.init_from, seed)) if cfg.init_from else None
        units[variant, seed] = Unit(
            variant, seed, cfg, data_dir, UnitFolder.of(out, variant, seed).path,
            UnitFolder.of(checkpoints, variant, seed).path,
            fingerprint(cfg, data_dir, source.fingerprint if source else None),
            source.out if source else None)
    if only:
        wanted = set(only) | {params.variant(study, v).init_from for v in only} - {None}
        return [unit for unit in units.values() if unit.variant in wanted]
    return list(units.values())


def remove_stale(out: Path, units: list[Unit]) -> list[Path]:
    """Remove output folders of variants or seeds no longer in the study (the stage's output is
    persistent, so DVC does not clear it)."""
    keep = {unit.out for unit in units}
    stale = [seed_dir for seed_dir in Path(out).glob("*/seed*")
             if seed_dir.is_dir() and seed_dir not in keep]
    for seed_dir in stale:
        shutil.rmtree(seed_dir)
    for variant_dir in Path(out).glob("*"):
        if variant_dir.is_dir() and not any(variant_dir.iterdir()):
            variant_dir.rmdir()
    return stale
