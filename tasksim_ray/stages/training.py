"""Per-task pretraining stage: one model per task, cached per task."""

from __future__ import annotations

import math

import numpy as np
import torch

from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.data.transforms import LabelTransform
from tasksim_ray.errors import TrainingDiverged
from tasksim_ray.infra.progress import task_progress
from tasksim_ray.stages import Run, Stage
from tasksim_ray.stages.data import task_rows
from tasksim_ray.training.pretrain import PretrainedModel, TaskData, pretrain_all


def stage_pretrain(run: Run, tasks: Stage, feats: Stage) -> dict[str, PretrainedModel]:
    cfg = run.cfg
    table = TaskTable.in_folder(tasks.path)
    units = {t.name: t.units for t in table.tasks}
    rows = task_rows(feats)
    data = []
    for task, pos in rows["positions"].items():
        labels = table.labels(task)
        r = rows["rows"][task]
        content = table.fingerprint(task, r["train"], r["val"])
        data.append(TaskData(task, units[task], np.array(pos["train"], dtype=int), labels[r["train"]],
                             np.array(pos["val"], dtype=int), labels[r["val"]], content))
    for d in data if cfg.train.label_transform else []:  # a label a transform cannot take: refused before any job
        LabelTransform.fit(cfg.train.label_transform, d.y_train, f"train.label_transform, task '{d.task}'")
    store = torch.load(feats.path / "graphs.pt", weights_only=True)
    cached: list[bool] = []
    with run.timed("pretrain") as timing, task_progress(run.console, "pretrain", len(data)) as advance:
        def on_done(task: str, was_cached: bool) -> None:
            cached.append(was_cached)
            advance(task, was_cached)

        models = pretrain_all(store, data, cfg.model, cfg.train, cfg.seed, run.artifacts / "models",
                              on_done=on_done)
        timing["cached"] = all(cached)
    for task, m in models.items():
        if not math.isfinite(m.metrics["best_val_mae"]):  # a model cached before divergence stopped training
            raise TrainingDiverged(f"task '{task}': its model {m.directory.name} diverged (validation MAE "
                                   f"{m.metrics['best_val_mae']}); lower train.lr")
        run.log("pretrain", f"{task}: val MAE {m.metrics['best_val_mae']:.4g} {units[task]} "
                            f"({m.metrics['epochs_run']} epochs, n_train {m.metrics['n_train']})")
    return models
