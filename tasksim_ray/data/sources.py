"""The task-source registry: ``data.source`` names a loader here, and config validation reads the
names from this table. A ``"module:function"`` entry is imported on first use, so pymatgen loads
only when a crystal source is asked for. A new source is one loader and one line."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from tasksim_ray.config import DataConfig
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.errors import TasksimError

Loader = Callable[[DataConfig], TaskTable]

SOURCES: dict[str, Loader | str] = {
    "qm9pack": "tasksim_ray.data.molecules:load_qm9pack",
    "moleculenet": "tasksim_ray.data.molecules:load_moleculenet",
    "table": "tasksim_ray.data.molecules:load_table",
    "crystals": "tasksim_ray.data.crystals:load_crystal_tasks",
    "structure_table": "tasksim_ray.data.crystals:load_crystal_tasks",
    "id_prop": "tasksim_ray.data.crystals:load_crystal_tasks",
    "matbench": "tasksim_ray.data.crystals:load_crystal_tasks",
}


def loader(source: str) -> Loader:
    if source not in SOURCES:
        raise TasksimError(f"data.source: unknown source '{source}'; registered: {sorted(SOURCES)}")
    entry = SOURCES[source]
    if isinstance(entry, str):
        module, _, name = entry.partition(":")
        entry = getattr(importlib.import_module(module), name)
    return entry


def load_tasks(cfg: DataConfig) -> TaskTable:
    return loader(cfg.source)(cfg)
