"""Label outliers are caught at load: one warning line per task naming the row and value, and
``data.outliers`` keeps, drops or refuses them (issue 33 item 4: one ``mu`` of 1e308 among 600)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.config import DataConfig
from tasksim_ray.data.outliers import handle_outliers, robust_z
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.data.tasks import TaskTable

from .conftest import REPO, TINY_CONFIG, TINY_DATA

MOE_TASKS = REPO.parent / "shared" / "data" / "crystals" / "moe_tasks"


def _huge_mu(tmp: Path, logme_stop: bool) -> list[str]:
    """All 600 molecules with mu of row 101 set to 1e308; ``logme_stop`` also leaves homo too few holdout
    labels, so the run stops (exit 2) right after loading, before any training."""
    frame = pd.read_csv(TINY_DATA)[["mol_id", "smiles", "mu", "alpha", "homo"]].copy()
    assert len(frame) == 600
    frame.loc[frame.index[100], "mu"] = 1e308
    if logme_stop:
        frame.loc[frame.index[12:], "homo"] = np.nan
    frame.to_csv(tmp / "data.csv", index=False)
    return ["--set", f"data.path={tmp / 'data.csv'}", "--set", "data.targets=[mu, alpha, homo]",
            "--set", "transfer.tasks=[mu, alpha, homo]"]


def _run(tmp: Path, *extra: str) -> tuple[int, list[str], list[str]]:
    result = CliRunner().invoke(app, ["run", str(TINY_CONFIG), "--set", f"workdir={tmp / 'work'}", *extra])
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    warned = [x for x in lines if x.startswith("warning:")]
    return result.exit_code, [x for x in warned if "robust z" in x], [x for x in lines if x not in warned]


def test_one_huge_label_is_refused_with_error(tmp_path: Path) -> None:
    code, _, err = _run(tmp_path, *_huge_mu(tmp_path, False), "--set", "data.outliers=error")
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and "data.csv, data row 101: target 'mu' is 1e+308" in err[0], err
    assert not (tmp_path / "work" / "artifacts" / "models").exists()


def test_one_huge_label_warns_once_by_default(tmp_path: Path) -> None:
    code, warned, err = _run(tmp_path, *_huge_mu(tmp_path, True))
    assert code == 2 and "metric 'logme'" in err[0], err  # stopped after loading, as arranged
    assert len(warned) == 1, warned
    line = warned[0]
    assert "task 'mu': 1 label(s) with robust z > 20" in line and "= 1e+308" in line and "data row 101" in line
    assert "kept" in line


def test_drop_removes_the_label_from_its_task_only() -> None:
    frame = pd.DataFrame({"mol_id": [f"m{i}" for i in range(50)], "smiles": ["C"] * 50, "source": "f.csv",
                          "source_row": range(50), "a": np.linspace(0, 1, 50), "b": np.linspace(1, 2, 50)})
    frame.loc[7, "a"] = 5e6
    from tasksim_ray.data.tasks import Task
    table = TaskTable(frame, [Task("a"), Task("b")])
    kept, lines = handle_outliers(table, "keep", 20)
    assert kept is table and len(lines) == 1 and "row 'm7'" in lines[0]
    dropped, lines = handle_outliers(table, "drop", 20)
    assert np.isnan(dropped.labels("a")[7]) and np.isfinite(dropped.labels("a")).sum() == 49
    assert np.isfinite(dropped.labels("b")).all() and "dropped" in lines[0]
    assert np.isfinite(table.labels("a")[7])  # the input table is untouched


def test_robust_z_scales_by_the_mad_and_survives_overflow() -> None:
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 5.0, np.nan, 1e308, -1e308]))
    assert np.isnan(z[5]) and z[6] > 1e300 and z[7] > 1e300 and z[2] == 0.0
    assert z[4] == pytest.approx(2 / (1.4826 * 2))
    assert robust_z(np.array([-1e308] * 3 + [1e308, 0.0]))[3] == np.inf  # the difference overflows


@pytest.mark.skipif(not MOE_TASKS.is_dir(), reason="needs the shared crystal data")
def test_mp_eps_electronic_names_its_2_93e6_row() -> None:
    cfg = DataConfig(source="crystals", path=str(MOE_TASKS / "log_phonon_dielectric_mp_eps_electronic.json.gz"),
                     targets=["eps_electronic"])
    _, lines = handle_outliers(load_tasks(cfg), "keep", 1000)
    assert len(lines) == 1 and "2.929e+06" in lines[0] and "1 label(s)" in lines[0], lines
    _, lines = handle_outliers(load_tasks(cfg), "keep", 20)
    assert len(lines) == 1 and lines[0].split(": ", 2)[2].startswith("row") and "2.929e+06" in lines[0], lines
