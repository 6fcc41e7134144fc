"""Learning-curve cells: train one target model at one training-set size on one fold, test it.

A cell is (target, recipe, size, fold). The recipe says how the model starts: ``scratch`` (the
baseline), ``finetune`` from one pretrained checkpoint (single- or multi-task), or ``moe`` over
frozen per-task experts. Cells run as Ray tasks in parallel, and each finished cell is written
to its own JSON file keyed by everything it depends on, so a run killed halfway resumes with
only the missing cells.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import torch

from tasksim_ray import __version__
from tasksim_ray.config import FinetuneConfig, ModelConfig, MoEConfig
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import file_complete, publish_json, stable_hash
from tasksim_ray.models import build_model, load_checkpoint
from tasksim_ray.models.moe import MixtureOfExperts, initial_theta
from tasksim_ray.training.device import choose_device
from tasksim_ray.training.finetune import finetune_options, moe_options
from tasksim_ray.training.loop import FitOptions, fit, predict
from tasksim_ray.training.pretrain import model_hparams


@dataclass(frozen=True)
class Recipe:
    """How a target model starts. ``checkpoints`` are model folders (one to fine-tune from, or
    the experts); ``theta`` an optional similarity row that initialises the MoE gate."""

    kind: Literal["scratch", "finetune", "moe"]
    label: str
    checkpoints: tuple[str, ...] = ()
    theta: tuple[float, ...] | None = None
    finetune: FinetuneConfig | None = None  # a fine-tuning variant; None: the config's ``finetune``

    @property
    def key(self) -> str:
        # folder names carry the checkpoints' content keys; absolute paths would tie caches to a disk
        return stable_hash(self.kind, [Path(c).name for c in self.checkpoints], self.theta)


@dataclass(frozen=True)
class CellData:
    """One target's training rows at one size on one fold, with its validation and test rows."""

    target: str
    fold: int
    size: int
    train_pos: np.ndarray
    y_train: np.ndarray
    val_pos: np.ndarray
    y_val: np.ndarray
    test_pos: np.ndarray
    y_test: np.ndarray
    content_key: str


@dataclass(frozen=True)
class CellSettings:
    model: ModelConfig
    finetune: FinetuneConfig
    moe: MoEConfig
    seed: int

    def key_for(self, recipe: Recipe) -> Any:
        if recipe.kind == "moe":
            return [self.model.model_dump(), self.moe.model_dump(),
                    self.finetune.model_dump(include={"max_epochs", "patience", "batch_size"})]
        if recipe.kind == "scratch":
            return [self.model.model_dump(), self.finetune.model_dump(include={"lr", "max_epochs", "patience",
                                                                              "batch_size"})]
        return (recipe.finetune or self.finetune).model_dump()


def cell_key(cell: CellData, recipe: Recipe, settings: CellSettings) -> str:
    return stable_hash("cell", __version__, cell.target, cell.content_key, cell.size, cell.fold, recipe.key,
                       settings.key_for(recipe), settings.seed)


def finetune_setup(directory: Path, finetune: FinetuneConfig, seed: int,
                   device: torch.device) -> tuple[torch.nn.Module, FitOptions]:
    """A pretrained model with a fresh (seeded) head, and the strategy's training options."""
    torch.manual_seed(seed)
    model, _ = load_checkpoint(directory, device)
    model.reset_head(1)
    return model, finetune_options(model, finetune, pretrained=True)


def test_mae(model: torch.nn.Module, graphs: list, cell: CellData, mean: float, std: float,
             device: torch.device) -> float:
    """MAE on the cell's test molecules, in the target's units."""
    pred = predict(model, [graphs[i] for i in cell.test_pos], 256, device) * std + mean
    return float(np.mean(np.abs(pred - cell.y_test)))


def _build(recipe: Recipe, settings: CellSettings, seed: int, device: torch.device):
    if recipe.kind == "finetune":
        return finetune_setup(Path(recipe.checkpoints[0]), recipe.finetune or settings.finetune, seed, device)
    torch.manual_seed(seed)
    if recipe.kind == "scratch":
        model = build_model(settings.model.backbone, model_hparams(settings.model))
        return model, finetune_options(model, settings.finetune, pretrained=False)
    experts = [load_checkpoint(Path(c), device)[0] for c in recipe.checkpoints]
    theta = initial_theta(len(experts), settings.moe.init,
                          np.array(recipe.theta) if recipe.theta is not None else None, seed)
    model = MixtureOfExperts(experts, settings.moe.k, theta, settings.model)
    ft = settings.finetune
    return model, moe_options(model, settings.moe, ft.max_epochs, ft.patience, ft.batch_size)


def run_cell(store: dict[str, torch.Tensor], cell: CellData, recipe: Recipe, settings: CellSettings,
             num_threads: int = 1, *_after: Any) -> dict[str, Any]:
    """Train and test one cell (a Ray task body): test MAE in the target's units. ``_after`` are the
    results of the pretraining runs this cell starts from: Ray runs the cell once they are done."""
    torch.set_num_threads(num_threads)
    device = choose_device()
    graphs = unpack_graphs(store)
    seed = settings.seed + 1000 * cell.fold
    model, opts = _build(recipe, settings, seed, device)
    opts = replace(opts, stage=recipe.kind, task=cell.target)
    mean, std = float(np.mean(cell.y_train)), float(np.std(cell.y_train)) or 1.0
    result = fit(model, [graphs[i] for i in cell.train_pos], cell.y_train, [graphs[i] for i in cell.val_pos],
                 cell.y_val, opts, seed, mean, std, device)
    out = {"target": cell.target, "recipe": recipe.label, "kind": recipe.kind, "size": cell.size,
           "fold": cell.fold, "test_mae": test_mae(model, graphs, cell, mean, std, device),
           "val_mae": result.best_val_mae, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
           "seconds": round(result.seconds, 2)}
    if isinstance(model, MixtureOfExperts):
        out["gates"] = model.gates().detach().cpu().tolist()
    return out


def run_cells(store_ref: ray.ObjectRef, jobs: list[tuple[CellData, Recipe]], settings: CellSettings,
              cells_dir: Path, num_cpus: float, num_gpus: float, after: dict[str, ray.ObjectRef] | None = None,
              on_done: Callable[[str, bool], None] | None = None) -> list[dict[str, Any]]:
    """Every cell's result in the order asked; finished cells come from ``cells_dir``. ``after``
    maps checkpoint folders still being pretrained to their refs."""
    remote = ray.remote(run_cell).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=1)
    results: dict[str, dict[str, Any]] = {}
    pending: dict[ray.ObjectRef, tuple[str, str]] = {}
    keys: list[str] = []
    for cell, recipe in jobs:
        key = cell_key(cell, recipe, settings)
        path = cells_dir / f"{key}.json"
        if key in keys:  # the same cell asked twice (scratch shared by two studies) runs once
            continue
        keys.append(key)
        name = f"{cell.target} <- {recipe.label} n={cell.size} fold {cell.fold}"
        if file_complete(path):
            results[key] = json.loads(path.read_text())
            if on_done:
                on_done(name, True)
            continue
        deps = [after[c] for c in recipe.checkpoints if after and c in after]
        pending[remote.remote(store_ref, cell, recipe, settings, max(1, int(num_cpus)), *deps)] = (key, name)
    while pending:
        [ready], _ = ray.wait(list(pending), num_returns=1)
        key, name = pending.pop(ready)
        results[key] = ray.get(ready)
        publish_json(cells_dir / f"{key}.json", results[key])  # durable before the next one finishes
        if on_done:
            on_done(name, False)
    # the same cell can serve several labels (a variant equal to the default recipe): label by the job
    return [results[cell_key(cell, recipe, settings)] | {"recipe": recipe.label} for cell, recipe in jobs]
