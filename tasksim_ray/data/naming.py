"""From (file, column) to task: which columns of a file are tasks, and what each task is called.

Every loader goes through here so the config shape is the same for every source: ``data.targets``,
``data.aliases`` and ``data.units`` apply to every file, ``data.files.<stem>`` overrides them for one
file. A task is named by its alias (config beats a known dataset), else by its column when no other
file has that column, else ``<stem>:<column>`` with the stem shortened. Names become folder names,
so each is checked to be a safe path component.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tasksim_ray.config import DataConfig, FileConfig
from tasksim_ray.data.tasks import Task
from tasksim_ray.errors import TasksimError

_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
STEM_CHARS = 20  # of a file stem in a ``<stem>:<column>`` task name
# a task name is part of folder and file names (``<task>-<16-hex key>``, ``<task>__graph``): within 255 bytes
MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class Column:
    """A target column of a file, before it gets its task name."""

    source: str  # the file (or folder) it came from
    stem: str
    column: str
    units: str = ""
    alias: str | None = None


@dataclass(frozen=True)
class FileOptions:
    """``data`` settings merged with ``data.files.<stem>`` for one file."""

    targets: list[str] | None
    aliases: dict[str, str] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    trust_pickle: bool = False


def file_options(cfg: DataConfig, path: Path, stem: str) -> FileOptions:
    own = cfg.files.get(stem, FileConfig())
    trusted = own.trust_pickle or path.name in cfg.trust_pickle or stem in cfg.trust_pickle
    return FileOptions(own.targets if own.targets is not None else cfg.targets, cfg.aliases | own.aliases,
                       cfg.units | own.units, trusted)


def check_files(cfg: DataConfig, stems: list[str], where: Path) -> None:
    """``data.files`` may only name files that are there."""
    unknown = sorted(set(cfg.files) - set(stems))
    if unknown:
        raise TasksimError(f"{where}: data.files names {unknown}, not among the files {stems}")


def check_task_name(name: str, where: str) -> str:
    """A task name is a folder name: no separators, ``..``, leading dot or control characters."""
    if not name or _UNSAFE.search(name) or ".." in name or name.startswith("."):
        raise TasksimError(f"{where}: task name {name!r} is not safe as a folder name (no '/', '\\', '..', "
                           f"leading '.' or control characters); give the column an alias")
    if len(name.encode()) > MAX_NAME_CHARS:
        raise TasksimError(f"{where}: task name of {len(name.encode())} bytes ('{name[:20]}...') is too long (at most "
                           f"{MAX_NAME_CHARS}: it names the task's folders and files); give the column an alias "
                           "(data.aliases)")
    return name


def name_tasks(columns: list[Column], input_kind: str) -> list[Task]:
    """Short, unique, path-safe task names for ``columns`` (see the module docstring)."""
    counts = Counter(c.column for c in columns)
    tasks: list[Task] = []
    seen: dict[str, Column] = {}
    for c in columns:
        where = f"{c.source}: column '{c.column}'"
        if c.alias:
            name = c.alias
        elif counts[c.column] == 1:
            name = c.column
        else:
            name = f"{c.stem[:STEM_CHARS]}:{c.column}"
        check_task_name(name, where)
        if name in seen:
            other = seen[name]
            raise TasksimError(f"{where}: task name '{name}' is also the name of {other.source} column "
                               f"'{other.column}'; give one of them an alias")
        seen[name] = c
        tasks.append(Task(name, c.units, input_kind, c.source, c.column))
    return tasks
