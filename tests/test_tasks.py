from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasksim_ray.config import DataConfig
from tasksim_ray.data.sources import load_tasks
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.errors import TasksimError

from .conftest import TINY_DATA


def test_full_qm9_from_qm9pack() -> None:
    table = load_tasks(DataConfig(source="qm9pack"))
    assert len(table.frame) == 130_831
    assert table.names[:3] == ["mu", "alpha", "homo"] and {"A", "B", "C", "cv"} <= set(table.names)
    assert dict((t.name, t.units) for t in table.tasks)["homo"] == "Ha"
    assert table.frame["smiles"].iloc[0] == "C"


def test_moleculenet_csv_and_parquet_round_trip(tmp_path: Path) -> None:
    table = load_tasks(DataConfig(source="moleculenet", path=str(TINY_DATA), targets=["mu", "gap"]))
    assert table.names == ["mu", "gap"] and len(table.frame) == 600
    assert [t.units for t in table.tasks] == ["D", "Ha"]
    table.save(tmp_path / "t.parquet")
    back = TaskTable.load(tmp_path / "t.parquet")
    assert back.tasks == table.tasks
    pd.testing.assert_frame_equal(back.frame, table.frame)


def test_generic_table_with_missing_labels(tmp_path: Path) -> None:
    path = tmp_path / "mine.parquet"
    pd.DataFrame({"SMILES": ["CCO", "c1ccccc1", "CC(=O)O"], "logS": [0.1, np.nan, -1.0],
                  "name": ["a", "b", "c"]}).to_parquet(path)
    table = load_tasks(DataConfig(source="table", path=str(path), smiles_column="SMILES",
                                  units={"logS": "log mol/L"}))
    assert table.names == ["logS"] and table.tasks[0].units == "log mol/L"
    assert np.isnan(table.labels("logS")[1])


def test_missing_target_column_names_file_and_column() -> None:
    with pytest.raises(TasksimError, match=r"qm9_motse_600.csv: target column\(s\) \['nope'\] not found"):
        load_tasks(DataConfig(source="moleculenet", path=str(TINY_DATA), targets=["mu", "nope"]))


def test_unknown_task_name() -> None:
    table = load_tasks(DataConfig(source="moleculenet", path=str(TINY_DATA), targets=["mu", "gap"]))
    with pytest.raises(TasksimError, match=r"unknown task name\(s\) \['homo'\]"):
        table.subset(["mu", "homo"])


def test_missing_file_and_smiles_column(tmp_path: Path) -> None:
    with pytest.raises(TasksimError, match="data file not found"):
        load_tasks(DataConfig(source="table", path=str(tmp_path / "none.csv")))
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(TasksimError, match="SMILES column 'smiles' not found"):
        load_tasks(DataConfig(source="table", path=str(tmp_path / "x.csv")))
