"""The matrix study end to end on a tiny QM9 table: every metric judged as a recommender in
``recommendation.{json,md,png}``, with its cost; then one task added to the data, which computes
only the cells that involve it and refits the combined score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tasksim_ray.config import load_config
from tasksim_ray.infra.progress import Console
from tasksim_ray.transfer.runner import run_transfer

from .conftest import TINY_CONFIG

TARGETS = ["mu", "alpha", "homo", "lumo", "gap"]
SETS: dict[str, Any] = {"transfer.tasks": ["mu", "alpha", "homo"], "similarity.metrics": ["rsa", "cka", "logme"],
                        "similarity.bootstrap.n_boot": 0}


def _cells(workdir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (workdir / "artifacts" / "cells").glob("*/result.json")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("matrix")
    cfg = load_config(TINY_CONFIG, {"workdir": str(workdir), **SETS})
    first = run_transfer(cfg, ["matrix"], Console(quiet=True))
    before = _cells(workdir)
    more = {"data.targets": [*TARGETS, "A"], "transfer.tasks": ["mu", "alpha", "homo", "A"]}
    second = run_transfer(load_config(TINY_CONFIG, {"workdir": str(workdir), **SETS, **more}), ["matrix"],
                          Console(quiet=True))
    return {"workdir": workdir, "first": first, "before": before, "after": _cells(workdir), "second": second}


def test_recommendation_report_scores_every_metric_and_the_baselines(runs: dict[str, Any]) -> None:
    rec = json.loads((runs["workdir"] / "report" / "transfer" / "recommendation.json").read_text())
    assert set(rec["recommenders"]) == {"rsa", "cka", "logme", "combined"}
    assert set(rec["baselines"]) == {"random (expected)", "largest source", "oracle"}
    assert rec["baselines"]["oracle"]["regret"] == 0.0
    for r in rec["recommenders"].values():
        s = r["summary"]
        assert 0 <= s["top1"] <= s["top3"] <= 1 and s["regret"] >= 0
    assert rec["chosen"] in rec["recommenders"] and set(rec["targets"]) == {"mu", "alpha", "homo", "A"}
    assert rec["features"][-3:] == ["log10 source size", "label r", "|label r|"]
    cost = rec["cost"]
    assert cost["transfer_matrix_cells"] == 4 * 4 * 2 * 2  # targets x (scratch + 3 sources) x folds x sizes
    assert cost["similarity_s"] > 0 and cost["transfer_matrix_s"] > 0
    md = (runs["workdir"] / "report" / "transfer" / "recommendation.md").read_text()
    assert "| combined |" in md and "largest source" in md and "Don't pretrain" in md
    assert (runs["workdir"] / "report" / "transfer" / "recommendation.png").stat().st_size > 1000


def test_adding_a_task_computes_only_the_cells_that_involve_it(runs: dict[str, Any]) -> None:
    before, after = runs["before"], runs["after"]
    assert len(before) == 3 * 3 * 2 * 2
    assert all(after[name] == mtime for name, mtime in before.items())  # every earlier cell reused
    # A as a target (scratch + 3 sources) and as a source for the 3 earlier targets, 2 folds x 2 sizes
    assert len(after) - len(before) == (4 + 3) * 2 * 2
    first = runs["first"]["studies"]["matrix"]["recommendation"]["recommenders"]["combined"]["per_target"]
    second = runs["second"]["studies"]["matrix"]["recommendation"]["recommenders"]["combined"]["per_target"]
    assert set(second) == set(first) | {"A"}  # the combined score is refitted with the new target
    assert np.isfinite(runs["second"]["studies"]["matrix"]["gain"][3][0])
