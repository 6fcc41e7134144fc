"""Binary tasks derived by a threshold (``data.binary``).

Classification targets such as "is a metal" are often not shipped as their own column but follow from
a regression label (a band gap of zero). A derived task is one more column of the same table: 1 where
the source label passes the threshold, 0 where it does not, missing where the source is missing; the
source task stays. The transfer studies see a 0/1 task and train it with a logistic loss and score it
by ROC-AUC and accuracy.
"""

from __future__ import annotations

import numpy as np

from tasksim_ray.config import BinaryConfig
from tasksim_ray.data.naming import check_task_name
from tasksim_ray.data.tasks import Task, TaskTable
from tasksim_ray.errors import TasksimError


def rule(spec: BinaryConfig) -> str:
    """The threshold as text, e.g. ``'jarvis_2d_gap' < 0.1``."""
    return f"'{spec.task}' < {spec.below:g}" if spec.below is not None else f"'{spec.task}' > {spec.above:g}"


def derive_binary(table: TaskTable, specs: dict[str, BinaryConfig]) -> tuple[TaskTable, list[str]]:
    """``table`` with one 0/1 task per ``specs`` entry added, and one line per task saying its rule and
    class balance; a clashing name, an unknown source task or a single class is refused in one line."""
    if not specs:
        return table, []
    frame, tasks, lines = table.frame.copy(), list(table.tasks), []
    for name, spec in specs.items():
        where = f"data.binary.{name}"
        check_task_name(name, where)
        if name in table.names:
            raise TasksimError(f"{where}: a task named '{name}' is already loaded (choose another name)")
        if spec.task not in table.names:
            raise TasksimError(f"{where}.task: no loaded task '{spec.task}'; loaded: {table.names}")
        y = table.labels(spec.task)
        known = ~np.isnan(y)
        hit = y < spec.below if spec.below is not None else y > spec.above
        positives = int(hit[known].sum())
        if positives in (0, int(known.sum())):
            raise TasksimError(f"{where}: {rule(spec)} holds for {positives} of {int(known.sum())} labels "
                               "(one class: nothing to classify)")
        frame[name] = np.where(known, hit.astype(np.float64), np.nan)
        source = table.task(spec.task)
        tasks.append(Task(name, "", source.input_kind, source.source, f"{source.column or spec.task} -> {rule(spec)}"))
        lines.append(f"task '{name}': 1 where {rule(spec)} ({positives} of {int(known.sum())}, "
                     f"{100 * positives / known.sum():.0f}%), else 0")
    return TaskTable(frame, tasks), lines
