"""deploy/ray/: the KubeRay RayCluster and the `ray up` cluster config, checked offline with
Ray's own code (what KubeRay's autoscaler and `ray up` run on them first) and against what the
ray executor needs: Ray at the extra's version, a GPU per worker, nothing trained on the head,
one shared workspace at the same path on every node."""


import pytest
import yaml
from conftest import REPO

RAY_DIR = REPO / "deploy" / "ray"


def ray_pin() -> str:
    """The tested Ray version (constraints.txt; pyproject.toml's `ray` extra holds a range)."""
    [pin] = [line.split("==")[1].split()[0] for line in
             (REPO / "constraints.txt").read_text().splitlines() if line.startswith("ray==")]
    return pin


def manifest(kind: str) -> dict:
    [found] = [doc for doc in yaml.safe_load_all((RAY_DIR / "raycluster.yaml").read_text())
               if doc["kind"] == kind]
    return found


def test_kuberay_cluster_is_what_the_ray_executor_needs(ray_extra):
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cluster = manifest("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["spec"]["rayVersion"] == ray_pin()
    # The autoscaler's reading of the CR, validated against Ray's cluster-config schema.
    node_types = _derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 0  # no unit on the head
    assert node_types["gpu"]["resources"]["GPU"] == 1 and node_types["gpu"]["max_workers"] >= 2
    pods = [cluster["spec"]["headGroupSpec"]["template"]["spec"],
            *[group["template"]["spec"] for group in cluster["spec"]["workerGroupSpecs"]]]
    claim = manifest("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    for pod in pods:  # one image, one workspace at one path, one tracking server
        [container] = pod["containers"]
        assert container["image"] == pods[0]["containers"][0]["image"]
        assert container["volumeMounts"] == [{"name": "work", "mountPath": "/work"}]
        assert pod["volumes"] == [{"name": "work", "persistentVolumeClaim":
                                   {"claimName": claim["metadata"]["name"]}}]
        env = {item["name"]: item for item in container["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"].startswith("http")


def test_ray_up_config_passes_rays_own_validation(ray_extra):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RAY_DIR / "cluster.yaml").read_text())
    filled = prepare_config(config)  # what `ray up` does first: defaults, then the schema
    validate_config(filled)
    assert filled["available_node_types"][filled["head_node_type"]]["resources"] == {"CPU": 0}
    assert "--num-cpus=0" in " ".join(filled["head_start_ray_commands"])
    assert "--volume /work:/work" in filled["docker"]["run_options"]
    assert any("/work" in command and "mount" in command
               for command in filled["initialization_commands"])
    assert filled["docker"]["image"] == manifest("RayCluster")["spec"]["headGroupSpec"][
        "template"]["spec"]["containers"][0]["image"]


def test_ray_up_validation_rejects_a_misspelt_field(ray_extra):
    """The check above can fail: Ray's schema refuses unknown node-type fields."""
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((RAY_DIR / "cluster.yaml").read_text())
    config["available_node_types"]["gpu"]["max_worker"] = 8
    with pytest.raises(ValidationError, match="max_worker"):
        validate_config(prepare_config(config))


def test_the_image_installs_the_ray_extra():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert '-e ".[torch,gpu,ray]"' in dockerfile and '-e ".[torch,tensorflow,ray]"' in dockerfile
