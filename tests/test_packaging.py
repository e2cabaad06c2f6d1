"""Packaging: ranges in pyproject.toml, the tested versions in constraints.txt (what
scripts/setup.sh and `mlflow run`'s python_env.yaml install with), a Keras backend per extra,
`ablations --version`, LICENSE."""

import subprocess
import sys
import tomllib
from importlib.metadata import version

from packaging.requirements import Requirement

import yaml
from mlflow.utils.environment import _PythonEnv
from mlflow.utils.requirements_utils import _parse_requirements

import ablations
from conftest import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def constraints_pins() -> dict[str, str]:
    """constraints.txt as {normalized name: version}."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            [spec] = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    return pins


def test_every_requirement_is_a_range_its_tested_version_satisfies():
    pins = constraints_pins()
    requirements = [*PROJECT["dependencies"],
                    *(r for extra in PROJECT["optional-dependencies"].values() for r in extra)]
    for line in requirements:
        requirement = Requirement(line)
        assert not any(s.operator == "==" for s in requirement.specifier), line  # a range
        name = requirement.name.lower().replace("_", "-")
        if name in pins:
            assert requirement.specifier.contains(pins[name]), (line, pins[name])
    for name in ("keras", "mlflow", "dvc", "torch", "tensorflow-cpu", "jax", "scikit-learn"):
        assert name in pins, name


def test_each_keras_backend_is_an_extra_and_setup_installs_torch_with_the_pins():
    extras = PROJECT["optional-dependencies"]
    backends = {name: {Requirement(r).name for r in extras[name]}
                for name in ("torch", "tensorflow", "jax")}
    assert backends == {"torch": {"torch"}, "tensorflow": {"tensorflow-cpu"}, "jax": {"jax"}}
    assert not {Requirement(r).name for r in PROJECT["dependencies"]} & {
        "torch", "tensorflow", "tensorflow-cpu", "jax"}
    assert ablations.DEFAULT_BACKEND == "torch"
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'pip install --quiet -c constraints.txt -e ".[torch,test]"' in setup


def test_version_option_and_license():
    out = subprocess.run([sys.executable, "-m", "ablations.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"ablations {ablations.__version__}"
    assert version("ablations") == ablations.__version__  # the installed metadata agrees
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert PROJECT["license"] == "MIT"


def test_mlflow_run_installs_the_tested_versions():
    """python_env.yaml read as `mlflow run .` reads it: MLflow's parser follows its `-c` to
    constraints.txt, so every pin applies to the project's install."""
    python_env = _PythonEnv.from_yaml(REPO / "python_env.yaml")
    requirements = list(_parse_requirements(python_env.dependencies, is_constraint=False,
                                            base_dir=str(REPO)))
    constraints = {}
    for requirement in requirements:
        if requirement.is_constraint:
            parsed = Requirement(requirement.req_str)
            constraints[parsed.name.lower().replace("_", "-")] = str(parsed.specifier)
    assert constraints == {name: f"=={pin}" for name, pin in constraints_pins().items()}
    installs = [r.req_str for r in requirements if not r.is_constraint]
    assert installs == [f"-e .[{ablations.DEFAULT_BACKEND}]"]  # the project, default backend
    assert python_env.python == f"{sys.version_info.major}.{sys.version_info.minor}"  # as tested
    assert yaml.safe_load((REPO / "MLproject").read_text())["python_env"] == "python_env.yaml"
