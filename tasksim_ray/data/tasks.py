"""Tasks and task tables.

A :class:`Task` is one regression target: one column of one file. Tasks that share inputs live in
one :class:`TaskTable`: rows are molecules, one column per target, and a missing label (NaN) means
the molecule is simply not part of that task. Each row also records which file it came from and
its position there (``source``, ``source_row``), so published splits (file positions) map onto
table rows. Tables are stored as Parquet with the task metadata in the schema, so the artifact is
self-describing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import stable_hash, writing

ID, SMILES = "mol_id", "smiles"
TABLE_FILE = "tasks.parquet"  # how a tasks stage saves its table
SOURCE, SOURCE_ROW = "source", "source_row"
Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # (train, val, test) row positions
INPUT_COLUMNS: dict[str, str] = {"molecule": "smiles", "crystal": "structure"}
_META_KEY = b"tasksim.tasks"


@dataclass(frozen=True)
class Task:
    """``source`` is the file (or folder) the labels came from and ``column`` the column there, so
    logs and reports can say which column became which task."""

    name: str
    units: str = ""
    input_kind: str = "molecule"
    source: str = ""
    column: str = ""


@dataclass
class TaskTable:
    frame: pd.DataFrame  # columns: mol_id, the input (smiles or structure), source, source_row, one per task
    tasks: list[Task]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def labels(self, name: str) -> np.ndarray:
        return self.frame[name].to_numpy(dtype=np.float64)

    @property
    def kind(self) -> str:
        """The input kind every task of this table shares: ``molecule`` or ``crystal``."""
        return self.tasks[0].input_kind if self.tasks else "molecule"

    @property
    def input_column(self) -> str:
        return INPUT_COLUMNS[self.kind]

    def inputs(self) -> np.ndarray:
        """Each row's input: a SMILES string, or a crystal structure as JSON."""
        return self.frame[self.input_column].to_numpy()

    def fingerprint(self, name: str, *parts: list[int] | np.ndarray) -> str:
        """A key of one task's labels and inputs on these row lists, not of the whole table, so
        adding a task to a study leaves the other tasks' cached work valid."""
        labels, inputs = self.labels(name), self.inputs()
        return stable_hash(name, *[(labels[list(rows)].tobytes().hex(), inputs[list(rows)].tolist()) for rows in parts],
                           length=32)

    def subset(self, names: list[str]) -> TaskTable:
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise TasksimError(f"unknown task name(s) {unknown}; available: {self.names}")
        by_name = {t.name: t for t in self.tasks}
        return TaskTable(self.frame[[ID, self.input_column, SOURCE, SOURCE_ROW, *names]], [by_name[n] for n in names])

    def task(self, name: str) -> Task:
        found = next((t for t in self.tasks if t.name == name), None)
        if found is None:
            raise TasksimError(f"unknown task name '{name}'; available: {self.names}")
        return found

    def save(self, path: Path) -> None:
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        meta = {**(table.schema.metadata or {}), _META_KEY: json.dumps([asdict(t) for t in self.tasks])}
        with writing(path):
            pq.write_table(table.replace_schema_metadata(meta), path)

    @classmethod
    def load(cls, path: Path) -> TaskTable:
        return cls(pq.read_table(path).to_pandas(), cls.read_tasks(path))

    @classmethod
    def in_folder(cls, folder: Path) -> TaskTable:
        """The table a tasks stage saved in ``folder`` (as ``TABLE_FILE``)."""
        return cls.load(folder / TABLE_FILE)

    @staticmethod
    def read_tasks(path: Path) -> list[Task]:
        """The tasks of a saved table, from its schema alone (the rows stay on disk)."""
        return [Task(**t) for t in json.loads(pq.read_schema(path).metadata[_META_KEY])]


MIN_LABELS = 5  # fewer leaves a task one or two molecules to train on after the split


def check_table(table: TaskTable) -> None:
    """Refuse a table no model can learn from, naming the file, row or column, before any training:
    duplicate ids, infinite labels, a target with (almost) no labels or one value for all."""
    frame = table.frame
    dup = frame[ID].duplicated(keep=False).to_numpy()
    if dup.any():
        first = frame[ID].iloc[int(np.argmax(dup))]
        rows = frame.loc[frame[ID] == first, SOURCE_ROW].tolist()
        raise TasksimError(f"{frame[SOURCE].iloc[int(np.argmax(dup))]}: molecule id '{first}' is on several "
                           f"data rows ({', '.join(str(r + 1) for r in rows[:3])})")
    for task in table.tasks:
        labels = table.labels(task.name)
        where = f"{task.source}: target '{task.column or task.name}'"
        if np.isinf(labels).any():
            i = int(np.argmax(np.isinf(labels)))
            raise TasksimError(f"{frame[SOURCE].iloc[i]}, data row {frame[SOURCE_ROW].iloc[i] + 1}: target "
                               f"'{task.column or task.name}' is {labels[i]}")
        known = labels[~np.isnan(labels)]
        if len(known) < MIN_LABELS:
            raise TasksimError(f"{where} has {len(known)} labels; at least {MIN_LABELS} are needed")
        if np.ptp(known) == 0:
            raise TasksimError(f"{where} is constant ({known[0]:g} for all {len(known)} labels): nothing to learn")


def check_header(columns: Sequence[object], path: Path | str) -> None:
    """Refuse a header that names a column twice: readers would rename the second one (pandas
    makes ``mu`` and ``mu.1``) or drop it, and a renamed column would silently become a task."""
    seen: set[str] = set()
    for col in columns:
        name = str(col)
        if pd.isna(col) or not name.strip():
            continue  # a blank header cell (an unnamed index column) is not a name
        if name in seen:
            raise TasksimError(f"{path}: column '{name}' appears more than once in the header; "
                               "rename or drop one (columns are never renamed silently)")
        seen.add(name)


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV whose header names each column once (read raw first: pandas renames repeats)."""
    check_header(pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist(), path)
    return pd.read_csv(path)


def read_parquet(path: Path) -> pd.DataFrame:
    check_header(pq.read_schema(path).names, path)
    return pd.read_parquet(path)


def read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise TasksimError(f"{path}: data file not found")
    try:
        frame = read_parquet(path) if path.suffix == ".parquet" else read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, OSError, ValueError) as exc:
        raise TasksimError(f"{path}: cannot read table ({str(exc).splitlines()[0]})") from None
    if frame.empty:
        raise TasksimError(f"{path}: table has a header but no rows")
    return frame


# a number followed by a unit: "1.85 D", "-0.25Ha", "3e2 K" (not "C6H6": a number must come first)
_NUMBER_WITH_UNIT = re.compile(r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*([^\d\s.,+-].*?)\s*$")


def numeric_columns(frame: pd.DataFrame, exclude: set[str], where: str) -> list[str]:
    """Every numeric column but ``exclude`` (the default targets). A column of numbers with a unit
    suffix is refused, naming it, rather than left out of the defaults in silence."""
    out = []
    for column in frame.columns:
        if column in exclude or pd.api.types.is_bool_dtype(frame[column]):
            continue
        if pd.api.types.is_numeric_dtype(frame[column]):
            out.append(column)
        else:
            check_unit_suffix(frame[column], str(column), where)
    return out


def check_unit_suffix(values: pd.Series, column: str, where: str) -> None:
    """Refuse a text column whose every value is a number with one of a few unit suffixes."""
    text = values.dropna().astype(str)
    found = text.str.extract(_NUMBER_WITH_UNIT, expand=False)
    if len(text) and found.notna().all() and found.nunique() <= 3:
        raise TasksimError(f"{where}: column '{column}' holds numbers with a unit ('{text.iloc[0].strip()}'): write "
                           f"plain numbers and give the unit in data.units ({column}: {found.iloc[0]}), or leave the "
                           "column out with data.targets")


def check_links(folder: Path) -> None:
    """A data folder's symbolic links that loop (one to itself), point nowhere, or point back at the
    folder or above it: named in one line instead of skipped in silence (a loop also makes every
    walk of the folder fail)."""
    for entry in sorted(folder.iterdir()):
        if not entry.is_symlink():
            continue
        try:
            target = entry.resolve(strict=True)
        except (OSError, RuntimeError):  # ELOOP, a dangling link
            raise TasksimError(f"{entry}: a symbolic link that loops or points nowhere, in the data folder "
                               f"{folder}; remove it or point it at a data file") from None
        if target == folder.resolve() or target in folder.resolve().parents:
            raise TasksimError(f"{entry}: a symbolic link to the data folder {folder} itself (or a folder above it); "
                               "remove it")


def labelled_rows(labels: np.ndarray, order: np.ndarray, limit: int | None) -> np.ndarray:
    """The first ``limit`` rows of ``order`` that have a label (all of them for None)."""
    labelled = order[~np.isnan(labels[order])]
    return labelled[:limit] if limit else labelled
