"""Crystal datasets as task tables, so crystals flow through the same stages as molecules.

A structure is stored in the table as ``Structure.as_dict()`` JSON in the ``structure`` column.
Every file gives one task per target column (every numeric non-id column unless the config names
them); a folder of structure tables gives one task per (file, column), whose rows are that file's
structures, so a structure labelled by one file only is simply missing (NaN) for the others.
Pickles are read only when the config trusts them, and never just because they sit in a folder.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tasksim_ray.config import DataConfig
from tasksim_ray.data.crystal_files import (
    KNOWN_FILES,
    PICKLE_SUFFIXES,
    CrystalDataset,
    file_stem,
    load_id_prop_folder,
    load_table,
)
from tasksim_ray.data.naming import Column, FileOptions, check_files, file_options, name_tasks
from tasksim_ray.data.tasks import ID, SOURCE, SOURCE_ROW, TaskTable
from tasksim_ray.errors import TasksimError

STRUCTURE = "structure"
TABLE_SUFFIXES = (".json.gz", ".json", ".csv", ".parquet", *PICKLE_SUFFIXES)

log = logging.getLogger(__name__)


def _as_json(ds: CrystalDataset) -> list[str]:
    return [json.dumps(s.as_dict()) for s in ds.structures]


def _load_file(cfg: DataConfig, path: Path, opts: FileOptions, targets: list[str] | None) -> CrystalDataset:
    if cfg.source == "id_prop":
        target = (targets or ["target"])[0]
        return load_id_prop_folder(path, target=target, units=opts.units.get(target, ""))
    return load_table(path, targets, cfg.structure_column, cfg.id_column, opts.units or None, opts.trust_pickle)


def _table_files(cfg: DataConfig, folder: Path) -> list[Path]:
    """The folder's structure tables; a pickle only when the config trusts it by name."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(TABLE_SUFFIXES)
                   and (not p.name.endswith(PICKLE_SUFFIXES) or file_options(cfg, p, file_stem(p)).trust_pickle))
    if not files:
        raise TasksimError(f"{folder}: no structure tables ({', '.join(TABLE_SUFFIXES)}) in folder")
    return files


def _cap(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    if cfg.max_molecules is not None and len(frame) > cfg.max_molecules:
        frame = frame.sample(n=cfg.max_molecules, random_state=0).sort_index()
    return frame.reset_index(drop=True)


def unique_ids(ids: list[str], where: Path) -> list[str]:
    """Ids made unique within a file: crystal tables list one material on several rows (the
    experimental formation enthalpies have mp-2658 twice, as two measurements), so a repeat becomes
    ``<id>#2``, ``<id>#3`` (published splits count rows, not ids), with a warning naming the file."""
    seen: Counter[str] = Counter()
    out = []
    for i in map(str, ids):
        seen[i] += 1
        out.append(i if seen[i] == 1 else f"{i}#{seen[i]}")
    repeated = [i for i, n in seen.items() if n > 1]
    if repeated:
        log.warning("%s: %d ids are on several rows (e.g. '%s'); their repeats are named '<id>#2', ...",
                    where, len(repeated), repeated[0])
    return out


def load_crystal_tasks(cfg: DataConfig) -> TaskTable:
    """The crystal sources of ``data.source``: one file, an id_prop folder, or a folder of structure
    tables (e.g. the twelve MoE task files), one task per (file, target column)."""
    path = Path(cfg.path or "")
    if not path.exists():
        raise TasksimError(f"{path}: data file or folder not found")
    single = cfg.source == "id_prop" or path.is_file()
    files = [path] if single else _table_files(cfg, path)
    stems = [file_stem(f) for f in files]
    check_files(cfg, stems, path)
    loaded, columns = [], []
    for file, stem in zip(files, stems):
        opts = file_options(cfg, file, stem)
        # a folder-wide data.targets picks the columns each file has; data.files.<stem>.targets must exist
        per_file = single or stem in cfg.files and cfg.files[stem].targets is not None
        ds = _load_file(cfg, file, opts, opts.targets if per_file else None)
        targets = [t for t in ds.targets.columns if per_file or opts.targets is None or t in opts.targets]
        known = KNOWN_FILES.get(stem)
        loaded += [(file, stem, ds, targets)] if targets else []
        columns += [Column(str(file), stem, t, ds.units.get(t, ""),
                           opts.aliases.get(t) or (known.aliases.get(t) if known else None)) for t in targets]
    missing = [t for t in cfg.targets or [] if t not in {c.column for c in columns}]
    if not single and missing:
        raise TasksimError(f"{path}: data.targets {missing} are columns of none of the files {stems}")
    if not columns:
        raise TasksimError(f"{path}: no numeric target columns")
    tasks = name_tasks(columns, "crystal")
    names = iter(t.name for t in tasks)
    parts = []
    for file, stem, ds, targets in loaded:
        ids = unique_ids(ds.ids, file)
        part = pd.DataFrame({ID: ids if single else [f"{stem}:{i}" for i in ids], STRUCTURE: _as_json(ds),
                             SOURCE: str(file), SOURCE_ROW: np.arange(len(ds))})
        parts.append(part.assign(**{next(names): ds.labels(t) for t in targets}))
    frame = pd.concat(parts, ignore_index=True)  # a file's rows are NaN for the other files' tasks
    return TaskTable(_cap(frame, cfg), tasks)


def read_structures(path: Path) -> tuple[list[str], list[str]]:
    """(ids, structures as JSON) of a probe file: a structure table or an id_prop folder."""
    ds = load_id_prop_folder(path) if path.is_dir() else load_table(path, [])
    return [str(i) for i in ds.ids], _as_json(ds)
