"""Crystal datasets as task tables, so crystals flow through the same stages as molecules.

A structure is stored in the table as ``Structure.as_dict()`` JSON in the ``structure`` column.
One file gives one task per target column; a folder of structure tables gives one task per file
(named by the file), whose rows are that file's structures, so a structure labelled by one task
only is simply missing (NaN) for the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tasksim_ray.config import DataConfig
from tasksim_ray.data.crystal_files import (
    KNOWN_FILES,
    CrystalDataset,
    file_stem,
    load_id_prop_folder,
    load_json_table,
    load_table,
)
from tasksim_ray.data.tasks import ID, Task, TaskTable
from tasksim_ray.errors import TasksimError

STRUCTURE = "structure"
TABLE_SUFFIXES = (".json.gz", ".json", ".csv", ".parquet", ".pkl", ".pickle")


def _as_json(ds: CrystalDataset) -> list[str]:
    return [json.dumps(s.as_dict()) for s in ds.structures]


def _load_file(cfg: DataConfig, path: Path, targets: list[str] | None) -> CrystalDataset:
    if cfg.source == "id_prop":
        return load_id_prop_folder(path, target=(targets or ["target"])[0], units=cfg.units.get("target", ""))
    return load_table(path, targets, cfg.structure_column, cfg.id_column, cfg.units or None)


def _table_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.name.endswith(TABLE_SUFFIXES))
    if not files:
        raise TasksimError(f"{folder}: no structure tables ({', '.join(TABLE_SUFFIXES)}) in folder")
    return files


def _cap(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    if cfg.max_molecules is not None and len(frame) > cfg.max_molecules:
        frame = frame.sample(n=cfg.max_molecules, random_state=0).sort_index()
    return frame.reset_index(drop=True)


def load_crystal_tasks(cfg: DataConfig) -> TaskTable:
    """The crystal sources of ``data.source``: one file (a task per target) or a folder of files (a
    task per file, its first known target, e.g. the twelve MoE tasks)."""
    path = Path(cfg.path or "")
    if not path.exists():
        raise TasksimError(f"{path}: data file or folder not found")
    if cfg.source == "id_prop" or path.is_file():
        ds = _load_file(cfg, path, cfg.targets)
        frame = pd.DataFrame({ID: ds.ids, STRUCTURE: _as_json(ds)})
        for t in ds.targets.columns:
            frame[t] = ds.targets[t].to_numpy(dtype=np.float64)
        tasks = [Task(t, ds.units.get(t, ""), "crystal") for t in ds.targets.columns]
        return TaskTable(_cap(frame, cfg), tasks)
    files = _table_files(path)
    by_stem = {file_stem(f): f for f in files}
    names = cfg.targets or list(by_stem)
    unknown = [n for n in names if n not in by_stem]
    if unknown:
        raise TasksimError(f"{path}: data.targets names file(s) {unknown} not in the folder; files: {list(by_stem)}")
    parts, tasks = [], []
    for name in names:
        known = KNOWN_FILES.get(name)
        ds = _load_file(cfg, by_stem[name], [known.targets[0]] if known else None)
        target = ds.targets.columns[0]
        part = pd.DataFrame({ID: [f"{name}:{i}" for i in ds.ids], STRUCTURE: _as_json(ds),
                             name: ds.targets[target].to_numpy(dtype=np.float64)})
        parts.append(part)
        tasks.append(Task(name, cfg.units.get(name, ds.units.get(target, "")), "crystal"))
    frame = pd.concat(parts, ignore_index=True)  # a file's rows are NaN for the other files' tasks
    return TaskTable(_cap(frame, cfg), tasks)


def read_structures(path: Path) -> tuple[list[str], list[str]]:
    """(ids, structures as JSON) of a probe file: a structure table or an id_prop folder."""
    if path.is_dir():
        ds = load_id_prop_folder(path)
    else:
        ds = load_json_table(path, targets=[]) if path.name.endswith((".json", ".json.gz")) else load_table(path, [])
    return [str(i) for i in ds.ids], _as_json(ds)
