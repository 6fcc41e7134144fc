"""Binary tasks derived by a threshold (``data.binary``): the stand-in for a classification target such
as paper 003's mp_is_metal, from a band gap in the shared JARVIS 2D file; bad specs refused in one line
before any Ray task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.config import DataConfig, load_config
from tasksim_ray.data.binary import derive_binary
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.errors import TasksimError

from .conftest import REPO

JARVIS = REPO.parent / "shared" / "data" / "crystals" / "matminer" / "jarvis_dft_2d.json.gz"
GAP = {"jarvis_dft_2d": {"targets": ["gap opt"], "aliases": {"gap opt": "gap"}}}


def _data(**binary: dict[str, object]) -> DataConfig:
    return DataConfig(source="crystals", path=str(JARVIS), files=GAP, binary=binary)  # type: ignore[arg-type]


def test_a_band_gap_threshold_becomes_a_0_1_task_beside_its_source() -> None:
    cfg = _data(metal={"task": "gap", "below": 0.1})
    table, lines = derive_binary(load_tasks(cfg), cfg.binary)
    gap, metal = table.labels("gap"), table.labels("metal")
    known = ~np.isnan(gap)
    assert table.names == ["gap", "metal"] and np.array_equal(np.isnan(metal), ~known)
    assert np.array_equal(metal[known], (gap[known] < 0.1).astype(float))
    assert 0 < metal[known].sum() < known.sum()
    n = int(known.sum())
    assert lines == [f"task 'metal': 1 where 'gap' < 0.1 ({int(metal[known].sum())} of {n}, "
                     f"{100 * metal[known].sum() / n:.0f}%), else 0"]
    assert table.task("metal").column == "gap opt -> 'gap' < 0.1" and table.task("metal").units == ""
    above, _ = derive_binary(table, {"wide": _data(wide={"task": "gap", "above": 1.0}).binary["wide"]})
    assert np.array_equal(above.labels("wide")[known], (gap[known] > 1.0).astype(float))


@pytest.mark.parametrize(("spec", "message"), [
    ({"gap": {"task": "gap", "below": 0.1}}, "data.binary.gap: a task named 'gap' is already loaded"),
    ({"metal": {"task": "gpa", "below": 0.1}}, "data.binary.metal.task: no loaded task 'gpa'"),
    ({"metal": {"task": "gap", "below": -1.0}}, "data.binary.metal: 'gap' < -1 holds for 0 of"),
    ({"../x": {"task": "gap", "below": 0.1}}, "data.binary.../x: task name '../x' is not safe"),
])
def test_bad_binary_specs_are_refused_naming_the_key(spec: dict[str, dict[str, object]], message: str) -> None:
    cfg = _data(**spec)
    with pytest.raises(TasksimError) as err:
        derive_binary(load_tasks(cfg), cfg.binary)
    assert str(err.value).startswith(message), err.value


def test_a_spec_with_both_or_no_threshold_is_a_config_error() -> None:
    for spec in ({"task": "gap"}, {"task": "gap", "below": 0.1, "above": 1.0}):
        with pytest.raises(TasksimError, match="key 'data.binary.metal': a binary task sets exactly one of"):
            load_config(REPO / "configs" / "foundation_ft.yaml", {"data.binary": {"metal": spec}})


def test_an_unknown_source_task_stops_the_study_before_ray(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "study", str(REPO / "configs" / "foundation_ft.yaml"), "--set", f"workdir={tmp_path / 'run'}",
        "--set", f"data.path={JARVIS}", "--set", "data.binary={metal: {task: nope, below: 0.1}}",
        "--set", "transfer.tasks=[metal]"])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: data.binary.metal.task: no loaded task 'nope'"), lines
    assert not (tmp_path / "run" / "artifacts" / "cells").exists()
