"""The cluster launcher configs validate against the schema shipped in the Ray wheel."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_grafana_dashboard_plots_the_metrics_we_export() -> None:
    import inspect

    from tasksim_ray import metrics

    dash = json.loads((REPO / "cluster" / "grafana" / "tasksim_dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    source = inspect.getsource(metrics)
    for name in ("epochs", "probes_embedded", "similarity_pairs", "search_trials_running", "search_best_objective"):
        assert f'"{name}"' in source  # recorded by the library ...
        assert f"ray_tasksim_{name}" in exprs  # ... and plotted
