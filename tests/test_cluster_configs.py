"""The cluster launcher configs (the fake-provider one too) validate against the schema shipped in the
Ray wheel; the KubeRay manifests strictly against the ray.io/v1 and Kubernetes schemas."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from .conftest import REPO

SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
CONFIGS = sorted((REPO / "cluster").glob("*/cluster.yaml"))


def test_there_are_launcher_configs() -> None:
    assert {p.parent.name for p in CONFIGS} >= {"aws", "gcp"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.parent.name)
def test_launcher_config_validates(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, SCHEMA)
    nodes = config["available_node_types"]
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs no work
    gpu = [n for n in nodes.values() if n["resources"].get("GPU")]
    assert gpu and all(n["min_workers"] == 0 for n in gpu)  # GPU workers scale from zero
    assert config["idle_timeout_minutes"] > 0
    text = path.read_text().lower()
    assert "dashboard-host=0.0.0.0" not in text  # the dashboard is reached through a tunnel
    assert not any(word in text for word in ("aws_secret", "access_key", "private_key:"))
    assert starts_with_token_auth(config), "a node could start Ray without token auth"


def starts_with_token_auth(config: dict[str, Any]) -> bool:
    """Every `ray start` a launcher config runs has RAY_AUTH_MODE=token in force, and the token file is
    mounted on the nodes; a config that starts no Ray itself (the fake provider's) passes."""
    commands = config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", [])
    starts = [c for c in commands if "ray start" in c]
    if not starts:
        return True
    token_file = any(k.rstrip("/").endswith(".ray/auth_token") for k in (config.get("file_mounts") or {}))
    return token_file and all(c.split("ray start")[0].count("RAY_AUTH_MODE=token") == 1 for c in starts)


def test_a_config_without_token_auth_is_caught() -> None:
    config = yaml.safe_load((REPO / "cluster" / "aws" / "cluster.yaml").read_text())
    assert starts_with_token_auth(config)
    plain = [c.replace("export RAY_AUTH_MODE=token;", "") for c in config["head_start_ray_commands"]]
    assert not starts_with_token_auth(config | {"head_start_ray_commands": plain})
    assert not starts_with_token_auth(config | {"file_mounts": {}})


def test_grafana_dashboard_plots_the_metrics_we_export() -> None:
    import inspect

    from tasksim_ray.infra import metrics

    dash = json.loads((REPO / "cluster" / "grafana" / "tasksim_dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    source = inspect.getsource(metrics)
    for name in ("epochs", "probes_embedded", "similarity_pairs", "search_trials_running", "search_best_objective"):
        assert f'"{name}"' in source  # recorded by the library ...
        assert f"ray_tasksim_{name}" in exprs  # ... and plotted


# KubeRay: the ray.io/v1 fields against our schema written from the pinned KubeRay CRD (see its header),
# the Kubernetes types inside them (pod templates, resources, tolerations, env) against Kubernetes'
# own strict v1.37 schemas shipped by kubernetes-validate.
KUBERAY = REPO / "cluster" / "kuberay"
MANIFESTS = [KUBERAY / "raycluster.yaml", KUBERAY / "rayjob.yaml"]
K8S_VERSION = "v1.37.0"


def _kuberay_validator() -> jsonschema.Draft202012Validator:
    import kubernetes_validate
    from referencing import Registry, Resource

    k8s_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"{K8S_VERSION}-local-strict"
    k8s = json.loads((k8s_dir / "_definitions.json").read_text())
    registry = Registry().with_resource(k8s["$id"], Resource.from_contents(k8s))
    return jsonschema.Draft202012Validator(yaml.safe_load((KUBERAY / "ray.io_v1.schema.yaml").read_text()),
                                           registry=registry)


def _errors(manifest: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _kuberay_validator().iter_errors(manifest)]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_kuberay_manifest_validates(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert _errors(manifest) == []
    spec = manifest["spec"] if manifest["kind"] == "RayCluster" else manifest["spec"]["rayClusterSpec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    assert not head.get("enableIngress", False)
    gpu = [g for g in spec["workerGroupSpecs"]
           if all(c["resources"]["limits"].get("nvidia.com/gpu") for c in g["template"]["spec"]["containers"])]
    assert gpu and all(g["minReplicas"] == 0 < g["maxReplicas"] for g in gpu)  # GPU workers scale from zero
    assert all(any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"]["tolerations"]) for g in gpu)
    text = path.read_text().lower()
    assert not any(word in text for word in ("aws_secret", "access_key", "private_key", "password"))
    if manifest["kind"] == "RayJob":
        assert "python jobs/run_pipeline.py configs/" in manifest["spec"]["entrypoint"]


@pytest.mark.parametrize(("where", "change", "expected"), [
    (["spec", "workerGroupSpecs", 0], lambda g: g.update(minReplica=g.pop("minReplicas")), "minReplica"),
    (["spec", "workerGroupSpecs", 0, "template", "spec", "containers", 0],
     lambda c: c.update(resource=c.pop("resources")), "resource"),
    (["spec"], lambda s: s.update(enableInTreeAutoscaling="yes"), "'yes' is not of type 'boolean'"),
    (["spec", "workerGroupSpecs", 0, "template", "spec"], lambda s: s.update(tolerations={"key": "nvidia.com/gpu"}),
     "is not of type 'array'"),
    (["spec", "authOptions"], lambda a: a.update(mode="tokens"), "'tokens' is not one of"),
], ids=["misspelled-ray-key", "misspelled-k8s-key", "wrong-ray-type", "wrong-k8s-type", "bad-enum"])
def test_kuberay_schema_rejects_mistakes(where: list[str | int], change: Callable[[Any], None], expected: str) -> None:
    manifest = yaml.safe_load(MANIFESTS[0].read_text())
    node = manifest
    for key in where:
        node = node[key]
    change(node)
    errors = _errors(manifest)
    assert errors and any(expected in e for e in errors), errors


def test_rayjob_schema_rejects_mistakes() -> None:
    job = yaml.safe_load(MANIFESTS[1].read_text())
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    job["spec"]["entrypoint"] = ["python", "jobs/run_pipeline.py"]
    errors = _errors(job)
    assert any("shutdownAfterJobFinish" in e for e in errors) and any("is not of type 'string'" in e for e in errors)
