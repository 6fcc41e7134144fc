"""Label outliers: a label far outside the rest of its task (a unit slip, a failed calculation, 1e308)
distorts the task's standardisation and every study that touches it, so it is found at load.

The check is robust per task: z = (y - median) / (1.4826 MAD), the MAD scaled to a normal std, or the
inter-quartile range / 1.349 where the MAD is 0. A label with |z| above ``data.outlier_z`` is an
outlier. ``data.outliers`` says what happens, always with one warning line per task that has any:
``keep`` (the default: the data unchanged, so nothing changes silently), ``drop`` (the label becomes
missing, so the row leaves that task only) or ``error`` (refuse the table, naming the row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasksim_ray.data.tasks import ID, SOURCE, SOURCE_ROW, TaskTable
from tasksim_ray.errors import TasksimError

SHOWN = 3  # rows a warning names (the most extreme first)


@dataclass(frozen=True)
class Outlier:
    task: str
    row_id: str
    source: str
    source_row: int
    value: float
    z: float
    position: int  # row position in the table

    def describe(self) -> str:
        where = f"{Path(self.source).name}, data row {self.source_row + 1}"
        return f"row '{self.row_id}' ({where}) = {self.value:.4g} (z {self.z:.3g})"


def robust_z(labels: np.ndarray) -> np.ndarray:
    """|y - median| / robust std of the known labels (NaN where a label is missing; 0 for a constant task)."""
    known = labels[np.isfinite(labels)]
    out = np.full(labels.shape, np.nan)
    if known.size == 0:
        return out
    median = np.median(known)
    scale = 1.4826 * np.median(np.abs(known - median))
    if scale == 0:
        q1, q3 = np.quantile(known, [0.25, 0.75])
        scale = (q3 - q1) / 1.349
    finite = np.isfinite(labels)
    with np.errstate(over="ignore", invalid="ignore"):
        out[finite] = np.abs(labels[finite] - median) / scale if scale > 0 else 0.0
    out[finite & ~np.isfinite(out)] = np.inf  # |1e308 - median| / scale overflows: farther than any threshold
    return out


def find_outliers(table: TaskTable, threshold: float) -> dict[str, list[Outlier]]:
    """Per task, its labels with robust z above ``threshold``, most extreme first."""
    frame, found = table.frame, {}
    for task in table.names:
        z = robust_z(table.labels(task))
        rows = np.flatnonzero(np.nan_to_num(z, nan=0.0) > threshold)
        if rows.size:
            rows = rows[np.argsort(-z[rows], kind="stable")]
            found[task] = [Outlier(task, str(frame[ID].iloc[i]), str(frame[SOURCE].iloc[i]),
                                   int(frame[SOURCE_ROW].iloc[i]), float(table.labels(task)[i]), float(z[i]), int(i))
                           for i in rows]
    return found


def outlier_line(task: str, found: list[Outlier], threshold: float, mode: str) -> str:
    """One line per task: how many, the most extreme rows with id and value, and what was done."""
    shown = "; ".join(o.describe() for o in found[:SHOWN]) + (f"; and {len(found) - SHOWN} more"
                                                             if len(found) > SHOWN else "")
    done = "dropped from the task (data.outliers: drop)" if mode == "drop" else \
        "kept (data.outliers: keep; drop or error to change)"
    return f"task '{task}': {len(found)} label(s) with robust z > {threshold:g}: {shown}; {done}"


def handle_outliers(table: TaskTable, mode: str, threshold: float) -> tuple[TaskTable, list[str]]:
    """The table with ``mode`` applied, and the warning lines; ``error`` raises on the first task
    with an outlier, naming its most extreme row."""
    found = find_outliers(table, threshold)
    if mode == "error" and found:
        task, rows = next(iter(found.items()))
        o = rows[0]
        raise TasksimError(f"{o.source}, data row {o.source_row + 1}: target '{task}' is {o.value:.4g}, robust z "
                           f"{o.z:.3g} > data.outlier_z {threshold:g} (data.outliers: error; keep or drop to go on)")
    if mode == "drop" and found:
        frame = table.frame.copy()
        for task, rows in found.items():
            frame.loc[frame.index[[o.position for o in rows]], task] = np.nan
        table = TaskTable(frame, table.tasks)
    return table, [outlier_line(t, rows, threshold, mode) for t, rows in found.items()]
