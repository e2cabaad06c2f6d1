"""MLproject and the remote-backend examples in deploy/, checked offline with MLflow's own code.

What MLflow would do with them is run for real up to the network: project loading, entry-point
commands, the backend config and Job template parsing, the Kubernetes Job body MLflow submits
(docker build/push and the Kubernetes API are replaced), the Databricks runs-submit request
(the HTTP call is replaced). DVC resolves every stage an entry point names.
"""

import json
import re
import shlex
import sys
import types
from pathlib import Path

import pytest
import yaml

import mlflow
from mlflow.exceptions import ExecutionException
from mlflow.projects import _parse_kubernetes_config, _validate_execution_environment
from mlflow.projects import databricks as mlflow_databricks
from mlflow.projects import docker as mlflow_docker
from mlflow.projects import env_type
from mlflow.projects._project_spec import load_project
from mlflow.tracking._tracking_service import utils as tracking_utils

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
BACKEND_CONFIG = K8S / "backend-config.json"
CLUSTER_SPEC = DEPLOY / "databricks" / "cluster-spec.json"
PROJECTS = {"local": ROOT, "kubernetes": K8S}

# entry point -> (parameters given, command MLflow must produce)
ENTRY_POINTS = {
    "main": ({}, "dvc repro"),
    "study": ({}, "dvc repro evaluate@batchnorm"),
    "train": ({"study": "batchnorm"}, "dvc repro train@batchnorm"),
    "polyfit": ({}, "dvc repro polyfit"),
    "budget": ({}, "dvc exp run -S budget=notebook -S overlay=none"),
}
# Keys MLflow reads from a Kubernetes backend config (mlflow.projects._parse_kubernetes_config);
# it ignores any other key silently, so a misspelt one would go unnoticed without this list.
KUBE_CONFIG_KEYS = {"kube-context", "repository-uri", "kube-job-template-path"}
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DIGEST = "sha256:" + "0" * 64


def _studies():
    return list(yaml.safe_load((ROOT / "params.yaml").read_text())["studies"])


def _commands(project):
    """Every entry point's command, with defaults and with each study where it takes one."""
    studies = _studies()
    for name, entry_point in project._entry_points.items():
        if "study" in entry_point.parameters:
            for study in studies:
                yield name, entry_point.compute_command({"study": study}, None)
        else:
            yield name, entry_point.compute_command({}, None)


@pytest.mark.parametrize("kind", PROJECTS)
def test_entry_points_format_with_their_parameters(kind):
    project = load_project(str(PROJECTS[kind]))
    assert project.name == "ablations"
    assert set(project._entry_points) == set(ENTRY_POINTS)
    for name, (params, expected) in ENTRY_POINTS.items():
        assert project.get_entry_point(name).compute_command(params, None) == expected
    study = project.get_entry_point("study")
    assert study.compute_command({"study": "depth"}, None) == "dvc repro evaluate@depth"
    with pytest.raises(ExecutionException, match="study"):
        project.get_entry_point("train").compute_command({}, None)  # no default study


def test_kubernetes_project_has_the_same_entry_points():
    local, k8s = (load_project(str(path)) for path in PROJECTS.values())
    for name, entry_point in local._entry_points.items():
        other = k8s.get_entry_point(name)
        assert other.command == entry_point.command, name
        assert {k: (p.type, p.default) for k, p in other.parameters.items()} == {
            k: (p.type, p.default) for k, p in entry_point.parameters.items()
        }, name


def test_each_backend_gets_an_environment_it_accepts():
    local, k8s = (load_project(str(path)) for path in PROJECTS.values())
    assert local.env_type == env_type.PYTHON
    assert Path(local.env_config_path) == ROOT / "python_env.yaml"
    assert local.docker_env is None
    _validate_execution_environment(local, "databricks")  # python_env: fine on Databricks
    mlflow_docker.validate_docker_env(k8s)  # what the Kubernetes backend checks first
    with pytest.raises(ExecutionException, match="docker"):
        _validate_execution_environment(k8s, "databricks")
    # The name becomes the Job's name prefix and the container's name.
    assert DNS_1123_LABEL.match(k8s.name)


def test_every_target_is_a_dvc_stage(monkeypatch):
    from dvc.repo import Repo

    monkeypatch.chdir(ROOT)  # a stage's address is relative to the current directory
    targets = {word for _, command in _commands(load_project(str(ROOT)))
               if command.startswith("dvc repro") for word in shlex.split(command)[2:]}
    assert {"polyfit", "train@batchnorm", "evaluate@batchnorm"} <= targets
    with Repo(str(ROOT)) as repo:
        stages = {stage.addressing for stage in repo.index.stages}
    assert targets <= stages, f"not in dvc.yaml: {sorted(targets - stages)}"


def test_the_budget_entry_point_composes_what_ablations_compose_writes(tmp_path):
    """Its -S overrides are Hydra's: DVC composes conf/ with them as `ablations compose` does."""
    from dvc.utils.hydra import compose_and_dump

    from ablations.config import compose_budget, read_yaml

    command = load_project(str(ROOT)).get_entry_point("budget").compute_command(
        {"overlay": "smoke"}, None)
    overrides = [word for word in shlex.split(command) if "=" in word]
    assert overrides == ["budget=notebook", "overlay=smoke"]
    compose_and_dump(tmp_path / "composed.yaml", str(ROOT / "conf"), None, "config", str(ROOT),
                     overrides)
    compose_budget("notebook", tmp_path / "ours.yaml", ROOT / "conf", "smoke")
    composed = read_yaml(tmp_path / "composed.yaml")
    assert composed == read_yaml(tmp_path / "ours.yaml") and composed["shrink"]["epochs"] == 1
    default = load_project(str(ROOT)).get_entry_point("budget").compute_command({}, None)
    compose_and_dump(tmp_path / "nb.yaml", str(ROOT / "conf"), None, "config", str(ROOT),
                     [word for word in shlex.split(default) if "=" in word])
    assert read_yaml(tmp_path / "nb.yaml")["shrink"] is None


@pytest.fixture
def kube(monkeypatch):
    """mlflow.projects.kubernetes, importable without the `kubernetes` client package: MLflow
    imports it at module level, but the functions checked here do not use it (or have it
    replaced)."""
    try:
        import kubernetes  # noqa: F401

        stubbed = False
    except ImportError:
        stubbed = True
    if stubbed:
        config_exception = types.ModuleType("kubernetes.config.config_exception")
        config_exception.ConfigException = type("ConfigException", (Exception,), {})
        config = types.ModuleType("kubernetes.config")
        config.config_exception = config_exception
        stub = types.ModuleType("kubernetes")
        stub.config, stub.client = config, types.ModuleType("kubernetes.client")
        for name, module in [("kubernetes", stub), ("kubernetes.config", config),
                             ("kubernetes.config.config_exception", config_exception)]:
            monkeypatch.setitem(sys.modules, name, module)
    import mlflow.projects.kubernetes as kb

    yield kb
    if stubbed:  # keep the module built on stubs out of later tests
        sys.modules.pop("mlflow.projects.kubernetes", None)
        if hasattr(mlflow.projects, "kubernetes"):
            delattr(mlflow.projects, "kubernetes")


@pytest.mark.parametrize("kind", PROJECTS)
def test_commands_survive_kubernetes_exec_form(kube, kind):
    """The Kubernetes backend shlex-quotes every word and runs the list without a shell: any
    quoting or glob in a command would reach DVC literally."""
    for name, command in _commands(load_project(str(PROJECTS[kind]))):
        assert kube._get_run_command([command]) == shlex.split(command), name


def test_backend_config_is_what_mlflow_reads(monkeypatch):
    config = json.loads(BACKEND_CONFIG.read_text())  # as `mlflow run --backend-config x.json`
    assert set(config) <= KUBE_CONFIG_KEYS
    monkeypatch.chdir(ROOT)  # the template path is relative to where `mlflow run` starts
    parsed = _parse_kubernetes_config(config)
    template = parsed["kube-job-template"]
    assert template == yaml.safe_load((ROOT / config["kube-job-template-path"]).read_text())
    assert (template["apiVersion"], template["kind"]) == ("batch/v1", "Job")
    assert template["metadata"]["namespace"]  # MLflow creates and polls the Job there
    pod = template["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}  # the only ones a Job accepts
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    image = load_project(str(K8S)).docker_env["image"]
    assert image.rpartition(":")[0] == config["repository-uri"]
    for missing in ("repository-uri", "kube-job-template-path"):
        with pytest.raises(ExecutionException, match=missing):
            _parse_kubernetes_config({k: v for k, v in config.items() if k != missing})


def test_image_matches_the_job_template():
    template = yaml.safe_load((K8S / "job-template.yaml").read_text())
    pod = template["spec"]["template"]["spec"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", dockerfile, re.M)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert workdirs[-1] == pod["containers"][0]["workingDir"]
    assert users[-1] == str(pod["securityContext"]["runAsUser"])
    assert f"--uid {users[-1]}" in dockerfile
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", "data", "mlflow.db", ".dvc/cache"} <= set(ignored)


def test_kubernetes_job_mlflow_would_submit(kube, tracking_store, monkeypatch):
    """`mlflow run deploy/kubernetes --backend kubernetes --backend-config …` through MLflow's
    own code, with docker build/push and the Kubernetes API replaced; checks the Job body."""
    image = load_project(str(K8S)).docker_env["image"]
    submitted_jobs = []

    class BatchV1Api:
        def create_namespaced_job(self, namespace, body, pretty):
            submitted_jobs.append((namespace, body))

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)  # MLFLOW_TRACKING_URI decides
    monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", "http://mlflow.ml-training.svc:5000")
    monkeypatch.setattr(mlflow_docker, "validate_docker_installation", lambda: None)
    monkeypatch.setattr(mlflow_docker, "build_docker_image",
                        lambda **kw: types.SimpleNamespace(tags=[kw["base_image"]], id=DIGEST))
    monkeypatch.setattr(kube, "push_image_to_registry", lambda tag: DIGEST)
    monkeypatch.setattr(kube, "_load_kube_context", lambda context=None: None)
    monkeypatch.setattr(kube, "kubernetes",
                        types.SimpleNamespace(client=types.SimpleNamespace(BatchV1Api=BatchV1Api)))
    monkeypatch.chdir(ROOT)

    submitted = mlflow.projects.run(
        "deploy/kubernetes", entry_point="train", parameters={"study": "batchnorm"},
        backend="kubernetes", backend_config="deploy/kubernetes/backend-config.json",
        # explicit: an earlier test's mlflow.set_experiment leaves a process-wide active id
        experiment_id="0", synchronous=False)

    [(namespace, job)] = submitted_jobs
    assert namespace == job["metadata"]["namespace"] == "ml-training"
    name = job["metadata"]["name"]
    assert name.startswith("ablations-") and len(name) <= 63 and DNS_1123_LABEL.match(name)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == "ablations"
    assert container["image"] == f"{image}@{DIGEST}"
    assert container["command"] == ["dvc", "repro", "train@batchnorm"]
    env = [variable["name"] for variable in container["env"]]
    assert len(env) == len(set(env))  # the template must not set what MLflow appends
    values = {v["name"]: v.get("value") for v in container["env"]}
    assert values["MLFLOW_RUN_ID"] == submitted.run_id
    assert values["MLFLOW_TRACKING_URI"] == "http://mlflow.ml-training.svc:5000"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    tags = mlflow.MlflowClient(tracking_store).get_run(submitted.run_id).data.tags
    assert tags["mlflow.project.backend"] == "kubernetes"
    assert tags["mlflow.project.entryPoint"] == "train"

    try:  # with the real client: every key must be a Kubernetes Job field (none dropped)
        from kubernetes.client import ApiClient
    except ImportError:
        return
    api = ApiClient()
    model = api._ApiClient__deserialize(job, "V1Job")
    assert api.sanitize_for_serialization(model) == job


def test_databricks_request_mlflow_would_submit(monkeypatch):
    """`mlflow run <clean clone> --backend databricks --backend-config cluster-spec.json
    --env-manager virtualenv`: MLflow's checks and the runs-submit request it would send."""
    spec = json.loads(CLUSTER_SPEC.read_text())
    cluster = spec["new_cluster"]
    # Fields the Jobs API requires of a new cluster (MLflow passes them through unchecked).
    assert cluster["spark_version"] and cluster["node_type_id"]
    assert "num_workers" in cluster or "autoscale" in cluster
    if cluster.get("num_workers") == 0:
        assert cluster["spark_conf"]["spark.databricks.cluster.profile"] == "singleNode"
    mlflow_databricks.before_run_validations("https://mlflow.example", spec)
    with pytest.raises(ExecutionException, match="tracking URI"):  # runs need a shared server
        mlflow_databricks.before_run_validations("sqlite:///mlflow.db", spec)

    requests = []
    runner = mlflow_databricks.DatabricksJobRunner(databricks_profile_uri="databricks")
    tarball = "/dbfs/mlflow-experiments/1/projects-code/abc123.tar.gz"
    monkeypatch.setattr(runner, "_upload_project_to_dbfs", lambda work_dir, exp_id: tarball)
    monkeypatch.setattr(runner, "_jobs_runs_submit",
                        lambda body: requests.append(body) or {"run_id": 7})
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")
    assert runner.run_databricks(
        "ablations", "train", str(ROOT), {"study": "batchnorm"}, "1", spec, "r" * 32,
        "virtualenv") == 7

    [body] = requests
    assert body["new_cluster"] == cluster
    pins = (ROOT / "constraints.txt").read_text().split()
    assert {"pypi": {"package": next(p for p in pins if p.startswith("mlflow=="))}} in (
        body["libraries"])  # the cluster's mlflow is the project's tested version
    command = body["shell_command_task"]["command"][-1]
    assert "mlflow run /databricks/mlflow/projects/abc123 --entry-point train" in command
    assert "--env-manager virtualenv" in command and "-P study=batchnorm" in command
    assert body["shell_command_task"]["env_vars"]["MLFLOW_TRACKING_URI"] == (
        "https://mlflow.example")
