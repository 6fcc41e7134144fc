"""Per-task pretraining: one model per task, trained in parallel as Ray tasks.

Each task's checkpoint is cached on its own (keyed by the task, its data and the model and
training settings), so adding a task to a study trains only that task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from tasksim_ray.config import ModelConfig, TrainConfig
from tasksim_ray.data.transforms import LabelTransform
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import Artifacts
from tasksim_ray.infra.jobs import Job, ManifestResults, run_jobs
from tasksim_ray.models import TaskModelInfo, backbone_version, build_model
from tasksim_ray.training.checkpoint import write_model_dir
from tasksim_ray.training.device import choose_device
from tasksim_ray.training.loop import FitOptions, fit


@dataclass(frozen=True)
class TaskData:
    """Rows (positions in the graph store) and labels of one task's train and validation sets."""

    task: str
    units: str
    train_pos: np.ndarray
    y_train: np.ndarray
    val_pos: np.ndarray
    y_val: np.ndarray
    content_key: str  # hash of this task's own molecules and labels: what its model depends on


@dataclass
class PretrainedModel:
    task: str
    directory: Path
    metrics: dict[str, Any]


def model_hparams(cfg: ModelConfig) -> dict[str, Any]:
    return cfg.hparams()


def train_one(store: dict[str, torch.Tensor], data: TaskData, model_cfg: ModelConfig,
              train_cfg: TrainConfig, seed: int, out_dir: str) -> dict[str, Any]:
    """Train one task's model and write its checkpoint folder atomically (runs in a Ray worker)."""
    torch.set_num_threads(max(1, int(train_cfg.num_cpus)))
    device = choose_device()
    graphs = unpack_graphs(store)
    train_graphs = [graphs[i] for i in data.train_pos]
    val_graphs = [graphs[i] for i in data.val_pos]
    transform = (LabelTransform.fit(train_cfg.label_transform, data.y_train, f"train.label_transform ({data.task})")
                 if train_cfg.label_transform else None)
    y_fit = data.y_train if transform is None else transform.forward(data.y_train)
    mean, std = float(np.mean(y_fit)), float(np.std(y_fit)) or 1.0
    torch.manual_seed(seed)
    hp = model_hparams(model_cfg)
    model = build_model(model_cfg.backbone, hp)
    opts = FitOptions.from_train(train_cfg, data.task)
    result = fit(model, train_graphs, data.y_train, val_graphs, data.y_val, opts, seed, mean, std, device,
                 transform=transform)
    metrics = {k: v for k, v in asdict(result).items() if k != "history"}
    info = TaskModelInfo(model_cfg.backbone, hp, data.task, data.units, mean, std, metrics,
                         label_transform=None if transform is None else transform.to_dict())
    write_model_dir(Path(out_dir), model, info, "model", result.history, task=data.task)
    return metrics


def pretrain_all(store: dict[str, torch.Tensor], tasks: list[TaskData], model_cfg: ModelConfig,
                 train_cfg: TrainConfig, seed: int, models_root: Path,
                 on_done: Callable[[str, bool], None] | None = None) -> dict[str, PretrainedModel]:
    """Train every task whose checkpoint is not cached, in parallel, and return all checkpoints.

    A checkpoint is keyed by its task's own data, not by the study, so adding a task to a study
    (or dropping one) reuses every other task's model."""
    folders = Artifacts(models_root, "model")
    results = ManifestResults(folders, "metrics")
    version = backbone_version(model_cfg.backbone)
    keys = [f"{d.task}-" + folders.key(d.task, d.content_key, model_cfg.model_dump(), version,
                                     _train_key(train_cfg), seed) for d in tasks]
    store_ref = ray.put(store) if not all(results.done(k) for k in keys) else None  # shipped once, if needed
    jobs = [Job(key, d.task, train_one, (store_ref, d, model_cfg, train_cfg, seed, str(models_root / key)),
                train_cfg.num_cpus, train_cfg.num_gpus, title=f"pretrain:{d.task}") for d, key in zip(tasks, keys)]
    metrics = run_jobs(jobs, results, on_done)
    return {d.task: PretrainedModel(d.task, models_root / key, m) for d, key, m in zip(tasks, keys, metrics)}


def _train_key(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings a model depends on (not the resources; no label transform: the key it had before
    transforms existed, so earlier models stay cached)."""
    return cfg.model_dump(exclude={"num_cpus", "num_gpus"} | (set() if cfg.label_transform else {"label_transform"}))
