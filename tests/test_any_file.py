"""Task files the project has never seen: every (file, column) becomes a task, named by the config's
alias, its column, or ``<stem>:<column>``, and the tasks stage says which column became which task.
The files are real MoE task files and QM9 molecules, copied under new names with renamed columns."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from rich.console import Console

from tasksim_ray.config import DataConfig, load_config
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.errors import TasksimError
from tasksim_ray.stages.pipeline import run_pipeline

from .conftest import REPO, TINY_DATA

TINY = REPO / "tests" / "data" / "crystals" / "tiny_tasks"
EXPT, EFORM = "expt_formation_enthalpy_combined_RC", "jarvis_dft_2d_eform_2022-04-11"


def _copy(src: str, dest: Path, rename: dict[str, str]) -> list[float]:
    """``src`` under a new name with renamed columns and a ``log_abs`` column of the first target."""
    with gzip.open(TINY / f"{src}.json.gz", "rt") as fh:
        doc = json.load(fh)
    for row in doc["data"]:
        for old, new in rename.items():
            row[new] = row.pop(old)
        row["log_abs"] = float(np.log1p(abs(row[next(iter(rename.values()))])))
    doc["columns"] = [rename.get(c, c) for c in doc["columns"]] + ["log_abs"]
    with gzip.open(dest, "wt") as fh:
        json.dump(doc, fh)
    return [row[next(iter(rename.values()))] for row in doc["data"]]


def _tasks_stage(tmp_path: Path, data: dict) -> tuple[dict, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "any-file", "workdir": str(tmp_path / "w"), "data": data}))
    console = Console(record=True, width=400)
    result = run_pipeline(load_config(path), console, until="tasks")
    return result, console.export_text()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "mine"
    out.mkdir()
    _copy(EXPT, out / "measured_enthalpies.json.gz", {"e_form expt": "dH"})
    _copy(EFORM, out / "layered_2d_formation_energies_v3.json.gz", {"e_form": "formation"})
    return out


def test_every_file_and_column_is_a_task(tmp_path: Path, folder: Path) -> None:
    files = {"layered_2d_formation_energies_v3": {"aliases": {"formation": "eform_2d"},
                                                  "units": {"formation": "eV/atom"}}}
    result, log = _tasks_stage(tmp_path, {"source": "crystals", "path": str(folder), "files": files,
                                          "units": {"dH": "eV/atom"}})
    table = TaskTable.load(Path(result.artifact) / "tasks.parquet")
    # the alias from the config; a column unique across files; <stem>:<column> (stem cut to 20) for a shared one
    assert table.names == ["eform_2d", "layered_2d_formation:log_abs", "dH", "measured_enthalpies:log_abs"]
    by_name = {t.name: t for t in table.tasks}
    assert by_name["eform_2d"].column == "formation" and by_name["eform_2d"].units == "eV/atom"
    assert Path(by_name["dH"].source).name == "measured_enthalpies.json.gz" and by_name["dH"].units == "eV/atom"
    assert table.labels("dH")[~np.isnan(table.labels("dH"))].size == 70 and len(table.frame) == 140
    for line in ("tasks: layered_2d_formation_energies_v3.json.gz column 'formation' -> task 'eform_2d' (eV/atom)",
                 ("tasks: measured_enthalpies.json.gz column 'log_abs' -> task 'measured_enthalpies:log_abs' "
                  "(no units)"),
                 "tasks: measured_enthalpies.json.gz column 'dH' -> task 'dH' (eV/atom)"):
        assert line in log, log
    # targets pinned per file, and a folder-wide targets list
    pinned = {"measured_enthalpies": {"targets": ["log_abs"], "aliases": {"log_abs": "log_dh"}}}
    table = load_tasks(DataConfig(source="crystals", path=str(folder), files=pinned))
    assert table.names == ["formation", "layered_2d_formation:log_abs", "log_dh"]
    assert load_tasks(DataConfig(source="crystals", path=str(folder), targets=["dH"])).names == ["dH"]


def test_bad_names_and_unknown_files_are_one_line_errors(folder: Path) -> None:
    with pytest.raises(TasksimError, match=r"mine: data.files names \['measured'\], not among the files "
                                           r"\['layered_2d_formation_energies_v3', 'measured_enthalpies'\]"):
        load_tasks(DataConfig(source="crystals", path=str(folder), files={"measured": {}}))
    for alias in ("../up", "a/b", ".hidden", "tab\there"):
        with pytest.raises(TasksimError, match=r"measured_enthalpies.json.gz: column 'dH': task name .* not safe"):
            load_tasks(DataConfig(source="crystals", path=str(folder), aliases={"dH": alias}))
    with pytest.raises(TasksimError, match=r"column 'dH': task name 'same' is also the name of "
                                           r".*v3.json.gz column 'formation'"):
        load_tasks(DataConfig(source="crystals", path=str(folder), aliases={"dH": "same", "formation": "same"}))
    with pytest.raises(TasksimError, match=r"data.targets \['nope'\] are columns of none of the files"):
        load_tasks(DataConfig(source="crystals", path=str(folder), targets=["dH", "nope"]))


def test_pickles_only_when_trusted(folder: Path) -> None:
    with gzip.open(folder / "measured_enthalpies.json.gz", "rt") as fh:
        ds = json.load(fh)
    pd.DataFrame(ds["data"][:5]).rename(columns={"dH": "y"}).drop(columns="log_abs").to_pickle(folder / "extra.pkl")
    # a pickle in the folder is not read unless the config trusts it by name
    assert "y" not in load_tasks(DataConfig(source="crystals", path=str(folder))).names
    for trust in ({"trust_pickle": ["extra.pkl"]}, {"files": {"extra": {"trust_pickle": True}}}):
        assert "y" in load_tasks(DataConfig(source="crystals", path=str(folder), **trust)).names
    with pytest.raises(TasksimError, match=r"extra.pkl: reading a pickle runs code from the file; list it in "
                                           r"data.trust_pickle"):
        load_tasks(DataConfig(source="structure_table", path=str(folder / "extra.pkl")))
    single = load_tasks(DataConfig(source="structure_table", path=str(folder / "extra.pkl"), trust_pickle=["extra"]))
    assert single.names == ["y"] and len(single.frame) == 5


def test_unknown_molecule_csv_with_two_targets(tmp_path: Path) -> None:
    src = pd.read_csv(TINY_DATA)
    mine = tmp_path / "lab_batch_7.csv"
    pd.DataFrame({"SMI": src["smiles"], "dipole": src["mu"], "bandgap": src["gap"],
                  "note": "x"}).to_csv(mine, index=False)
    result, log = _tasks_stage(tmp_path, {"source": "table", "path": str(mine), "smiles_column": "SMI",
                                          "aliases": {"bandgap": "gap"}, "units": {"dipole": "D", "bandgap": "Ha"}})
    table = TaskTable.load(Path(result.artifact) / "tasks.parquet")
    assert table.names == ["dipole", "gap"] and len(table.frame) == 600
    assert table.labels("gap").tolist() == src["gap"].tolist()
    assert "tasks: lab_batch_7.csv column 'bandgap' -> task 'gap' (Ha)" in log, log
    assert "tasks: lab_batch_7.csv column 'dipole' -> task 'dipole' (D)" in log, log
