"""Loading the tasks of ``data.source``: the name -> loader table is ``tasksim_ray.registry.SOURCES``
(config validation reads the names from there). Its ``"module:function"`` entries are imported on
first use, so pymatgen loads only when a crystal source is asked for. A new source is one loader
and one line (or ``SOURCES.register(name, loader)`` from user code)."""

from __future__ import annotations

from collections.abc import Callable

from tasksim_ray.config import DataConfig
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.registry import SOURCES

Loader = Callable[[DataConfig], TaskTable]


def load_tasks(cfg: DataConfig) -> TaskTable:
    loader: Loader = SOURCES.get(cfg.source)
    return loader(cfg)
