"""Train/val/test splits for every study, from one place.

A split is a (train, val, test) triple of row positions. Splits come from the user or from a
published study, never from a file's name alone:

* ``published``: a folder of ``*_seed{seed}*.json`` files in the mixture-of-experts study's format
  (rees-c/MoE): ``{key: [[train], [val], [test]]}`` row positions in the task's file;
* ``column``: a column of the task's data file holding ``train``/``val``/``test``;
* ``file``: a CSV with ``row,split`` columns or a JSON ``[[train], [val], [test]]`` (every seed);
* ``random``: seeded fractions of the task's labelled rows;
* ``kfold``: sklearn's shuffled ``KFold`` test folds over the file's rows (Matbench v0.1: 5 folds,
  ``random_state`` 18012019, rows in file order), a seeded fraction of each training fold validating.

``max_train`` then keeps a seeded subsample of every training part (nested: a smaller cap is a prefix).

:func:`load_splits` maps file positions onto the rows of a :class:`TaskTable` and drops rows without a
label for the task. A split naming a row the file lacks, or one row twice, is a one-line
:class:`TasksimError` naming the split file and key, raised before any work starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from tasksim_ray.config import SplitConfig
from tasksim_ray.data.crystal_files import KNOWN_FILES, file_stem, read_frame
from tasksim_ray.data.tasks import SOURCE, SOURCE_ROW, Split, Task, TaskTable, read_csv
from tasksim_ray.errors import TasksimError

PARTS = ("train", "val", "test")
SPLIT_FILE = "task_partition_indices_seed{seed}_correctedExptEf.json"  # the MoE study's file names


def published_split_file(folder: str | Path, seed: int) -> Path:
    """The one ``*_seed{seed}*.json`` file of ``folder`` (``seed1`` does not match ``seed10``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TasksimError(f"{folder}: split folder not found")
    pattern = re.compile(rf".*_seed{seed}(?!\d).*\.json$")
    found = sorted(p for p in folder.iterdir() if pattern.match(p.name))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise TasksimError(f"{folder / SPLIT_FILE.format(seed=seed)}: file not found; {what} *_seed{seed}*.json "
                           f"files in {folder}")
    return found[0]


def check_split(parts: Sequence[Sequence[int]], n_rows: int, where: str) -> Split:
    """Three integer position arrays within ``[0, n_rows)`` that share no row."""
    if len(parts) != 3:
        raise TasksimError(f"{where}: has {len(parts)} parts, expected [train, val, test]")
    try:
        split = tuple(np.asarray(p, dtype=np.int64).reshape(-1) for p in parts)
    except (TypeError, ValueError) as exc:
        raise TasksimError(f"{where}: row positions must be integers ({exc})") from None
    for name, idx in zip(PARTS, split):
        if len(idx) and (idx.min() < 0 or idx.max() >= n_rows):
            bad = int(idx.max() if idx.max() >= n_rows else idx.min())
            raise TasksimError(f"{where}: {name} index {bad} out of range for {n_rows} rows")
    every = np.concatenate(split)
    if len(np.unique(every)) != len(every):
        values, counts = np.unique(every, return_counts=True)
        raise TasksimError(f"{where}: row {int(values[counts > 1][0])} appears twice (overlapping parts)")
    return split  # type: ignore[return-value]


def load_published_splits(splits_dir: str | Path, split_key: str, n_rows: int,
                          seeds: Sequence[int] = range(5)) -> list[Split]:
    """The published (train, val, test) row positions of ``split_key``, one triple per seed."""
    splits: list[Split] = []
    for seed in seeds:
        path = published_split_file(splits_dir, seed)
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TasksimError(f"{path}: not a JSON split file ({type(exc).__name__}: {exc})") from None
        if split_key not in doc:
            raise TasksimError(f"{path}: no split key '{split_key}'; keys: {sorted(doc)}")
        splits.append(check_split(doc[split_key], n_rows, f"{path}: '{split_key}'"))
    return splits


def split_key(cfg: SplitConfig, task: Task) -> str:
    """``split.keys[task]``, else ``split.key``, else the task file's known split key, else the task name."""
    known = KNOWN_FILES.get(file_stem(Path(task.source)))
    return cfg.keys.get(task.name) or cfg.key or (known.split_key if known and known.split_key else task.name)


def _file_split(path: Path, n_rows: int) -> Split:
    where = str(path)
    if not path.is_file():
        raise TasksimError(f"{path}: split file not found")
    if path.suffix.lower() == ".json":
        try:
            return check_split(json.loads(path.read_text()), n_rows, where)
        except ValueError as exc:
            raise TasksimError(f"{path}: not a JSON [train, val, test] split ({exc})") from None
    try:
        frame = read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise TasksimError(f"{path}: cannot read split CSV ({str(exc).splitlines()[0]})") from None
    if not {"row", "split"} <= set(frame.columns):
        raise TasksimError(f"{path}: a split CSV needs columns 'row' and 'split'; columns: {list(frame.columns)}")
    return _by_label(frame["row"].to_numpy(), frame["split"], n_rows, where)


def _by_label(rows: np.ndarray, labels: pd.Series, n_rows: int, where: str) -> Split:
    """Positions grouped by their ``train``/``val``/``test`` label (other labels are an error)."""
    labels = labels.astype(str).str.strip().str.lower()
    bad = ~labels.isin(PARTS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TasksimError(f"{where}: row {i}: split label {labels.iloc[i]!r} is not train, val or test")
    return check_split([rows[(labels == part).to_numpy()] for part in PARTS], n_rows, where)


def _column_split(cfg: SplitConfig, source: Path, n_rows: int) -> Split:
    if not source.is_file():
        raise TasksimError(f"{source}: split.kind 'column' needs the task's data file, not a folder")
    if source.suffix.lower() in (".pkl", ".pickle"):
        raise TasksimError(f"{source}: split.kind 'column' does not re-read pickles; use split.kind 'file'")
    labels, columns = _split_column(str(source), cfg.column, source.stat().st_mtime_ns)
    if labels is None:
        raise TasksimError(f"{source}: no split column '{cfg.column}'; columns: {list(columns)}")
    where = f"{source}: split column '{cfg.column}'"
    return _by_label(np.arange(len(labels)), pd.Series(labels), n_rows, where)


@lru_cache(maxsize=4)
def _split_column(source: str, column: str, stamp: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """The split column of a data file (None if it has none) and its columns, read once for all the
    file's tasks (``stamp``: the file's mtime, so an edited file is read again)."""
    frame = read_frame(Path(source))
    return (frame[column].to_numpy() if column in frame.columns else None), tuple(map(str, frame.columns))


def kfold_splits(cfg: SplitConfig, n_rows: int) -> list[Split]:
    """Per ``cfg.seeds`` (test fold indices): the fold of ``KFold(n_splits, shuffle=True, random_state)``
    over ``n_rows`` positions as test, its training fold minus a seeded ``val_fraction`` as train."""
    order = np.arange(n_rows)
    np.random.RandomState(cfg.random_state).shuffle(order)  # what KFold(shuffle=True) does, then contiguous folds
    sizes = np.full(cfg.n_splits, n_rows // cfg.n_splits)
    sizes[:n_rows % cfg.n_splits] += 1
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    out = []
    for fold in cfg.seeds:
        test = order[bounds[fold]:bounds[fold + 1]]
        rest = np.random.default_rng([cfg.sample_seed, fold]).permutation(np.setdiff1d(order, test))
        n_val = max(1, round(cfg.val_fraction * len(rest)))
        out.append((np.sort(rest[n_val:]), np.sort(rest[:n_val]), np.sort(test)))
    return out


def _capped(cfg: SplitConfig, splits: list[Split]) -> list[Split]:
    """Each training part cut to a seeded ``max_train`` subsample (validation and test untouched)."""
    if cfg.max_train is None:
        return splits
    return [(np.sort(np.random.default_rng([cfg.sample_seed, seed, 1]).permutation(train)[:cfg.max_train]), val, test)
            for seed, (train, val, test) in zip(cfg.seeds, splits)]


def load_splits(cfg: SplitConfig, table: TaskTable, task: str) -> list[Split]:
    """One (train, val, test) triple of ``table`` row positions per ``cfg.seeds``, for ``task``.

    Published, column and file splits give positions in the task's file; they are checked against
    the rows loaded from it (all of them unless ``data.max_molecules`` capped the table)."""
    meta = table.task(task)
    frame = table.frame
    mine = np.flatnonzero((frame[SOURCE] == meta.source).to_numpy())
    file_rows = frame[SOURCE_ROW].to_numpy(dtype=np.int64)[mine]
    labelled = ~np.isnan(table.labels(task))
    if cfg.kind == "random":
        rows = mine[labelled[mine]]
        out = []
        for seed in cfg.seeds:
            order = np.random.default_rng(seed).permutation(rows)
            n_train, n_val = (round(f * len(order)) for f in cfg.fractions[:2])
            out.append((np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val]),
                        np.sort(order[n_train + n_val:])))
        return _capped(cfg, out)
    n_rows = int(file_rows.max()) + 1 if len(file_rows) else 0
    if cfg.kind == "kfold":
        if len(file_rows) != n_rows:  # folds over a subset of the file would not be the file's folds
            raise TasksimError(f"{meta.source}: split.kind 'kfold' needs every row of the file; the task table has "
                               f"{len(file_rows)} of {n_rows} (data.max_molecules capped it?)")
        positions = kfold_splits(cfg, n_rows)
    elif cfg.kind == "published":
        positions = load_published_splits(cfg.path or "", split_key(cfg, meta), n_rows, cfg.seeds)
    elif cfg.kind == "file":
        positions = [_file_split(Path(cfg.path or ""), n_rows)] * len(cfg.seeds)
    else:
        positions = [_column_split(cfg, Path(meta.source), n_rows)] * len(cfg.seeds)
    to_table = np.full(n_rows, -1, dtype=np.int64)
    to_table[file_rows] = mine
    out = []
    for split in positions:
        parts = [to_table[p] for p in split]
        missing = next((int(p[np.flatnonzero(t < 0)[0]]) for p, t in zip(split, parts) if (t < 0).any()), None)
        if missing is not None:
            raise TasksimError(f"{cfg.path or meta.source}: row {missing} of {meta.source} is not in the task "
                               f"table (data.max_molecules capped it?)")
        out.append(tuple(p[labelled[p]] for p in parts))
    return _capped(cfg, out)  # type: ignore[arg-type]
