"""The one training loop: per-task and multi-task pretraining (in-process and in Ray Train workers),
fine-tuning, mixtures of experts, the crystal STL/TL/MoE cells and search trials all run it.

Targets are standardised per task with the training mean and std, and a label that is missing
(NaN) contributes nothing to the loss. Validation MAE is reported in each task's units; early
stopping watches the mean standardised MAE (for one task, the same order as its MAE). The
best-validation weights are restored at the end, so the returned model is the early-stopped one.
Inputs are graphs (collated by PyG) or precomputed feature tensors (plain row batches, for frozen
extractors, where collation would cost more than the model). LR schedules, penalties (L2-SP, BSS,
a gate penalty) and per-epoch hooks (gradual unfreezing, metrics, search reports) plug in through
:class:`FitOptions`, so every experiment trains the same way.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from tasksim_ray.config import TrainConfig
from tasksim_ray.errors import TrainingDiverged
from tasksim_ray.infra.metrics import epoch_done
from tasksim_ray.training.objectives import masked_l1, masked_mse

if TYPE_CHECKING:
    from tasksim_ray.data.transforms import LabelTransform

Inputs = Sequence[Data] | Tensor  # graphs, or one precomputed feature row per sample (``batch.feat``)

# what to change when a loss diverges, by what is training (``FitOptions.stage``)
LR_SETTINGS = {"pretrain": "train.lr", "subset-pretrain": "transfer.budget.lr", "finetune": "transfer.finetune.lr",
               "scratch": "transfer.scratch.lr (or transfer.finetune.lr)",
               "moe": "transfer.moe.expert_lr / transfer.moe.head_lr", "search": "search.lr"}


@dataclass
class FitOptions:
    """How to train. ``patience=None`` trains every epoch (a fixed budget) and still keeps the
    best-validation weights. ``make_optimizer`` builds the optimiser from the model (parameter
    groups, per-layer learning rates); by default Adam over the trainable parameters.
    ``schedule="cosine"`` anneals every group's lr from its initial value to ``eta_min`` over
    ``max_epochs``, set at the start of each epoch (CosineAnnealingLR stepped per epoch)."""

    max_epochs: int
    patience: int | None
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    schedule: Literal["none", "cosine"] = "none"
    eta_min: float = 0.0
    loss: Literal["mse", "l1"] = "mse"  # on standardised labels, missing ones masked
    warmup_epochs: int = 0  # every group's lr ramps linearly over these first epochs, (epoch + 1) / (warmup + 1)
    objective: Literal["regression", "binary"] = "regression"  # binary: 0/1 labels, logistic loss on the logits
    penalty: Callable[[Tensor | None], Tensor] | None = None  # receives the batch's features (None under DDP)
    on_epoch_start: Callable[[int], None] | None = None
    on_epoch_end: Callable[[dict[str, float]], None] | None = None  # the epoch's record: metrics, reports
    sampler: Sampler[int] | None = None
    stage: str = "train"  # metric tags: what this training is, and for which task
    task: str = ""

    @classmethod
    def from_train(cls, cfg: TrainConfig, task: str = "") -> FitOptions:
        return cls(cfg.max_epochs, cfg.patience, cfg.batch_size, cfg.lr, cfg.weight_decay, stage="pretrain", task=task)


@dataclass
class TrainResult:
    best_val_mae: float  # one task: MAE in its units (binary: log-loss); several: mean standardised MAE
    best_epoch: int
    epochs_run: int
    n_train: int
    n_val: int
    seconds: float
    molecules_per_s: float
    val_mae_per_task: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


def as_matrix(y: np.ndarray) -> np.ndarray:
    return y.reshape(len(y), -1).astype(np.float64)


def with_targets(graphs: Sequence[Data], y: np.ndarray) -> list[Data]:
    """Shallow copies of ``graphs`` carrying one (1, T) row of ``y`` each as ``.y``."""
    out = []
    for g, row in zip(graphs, y):
        g = copy.copy(g)
        g.y = torch.tensor(row[None, :], dtype=torch.float32)
        out.append(g)
    return out


def forward(model: nn.Module, batch: Data) -> tuple[Tensor, Tensor | None]:
    """Predictions and graph features: every backbone exposes ``embed`` and ``head``. A DDP wrapper
    is called as a whole (its forward is what synchronises gradients), so it gives no features."""
    if isinstance(model, DistributedDataParallel):
        return model(batch), None
    z = model.embed(batch)
    return model.head(z), z


@dataclass
class FeatureBatch:
    """Rows of precomputed features (``feat``) with their targets: a batch without PyG's
    collation and attribute machinery, which would cost more than a small head's step."""

    feat: Tensor
    y: Tensor | None = None

    def to(self, device: torch.device) -> FeatureBatch:
        if self.feat.device == device:
            return self
        return FeatureBatch(self.feat.to(device), None if self.y is None else self.y.to(device))


def _batches(inputs: Inputs, batch_size: int) -> Iterator[Data | FeatureBatch]:
    if isinstance(inputs, Tensor):
        return (FeatureBatch(x) for x in inputs.split(batch_size))
    return iter(DataLoader(list(inputs), batch_size=batch_size))


def predict(model: nn.Module, inputs: Inputs, batch_size: int, device: torch.device) -> np.ndarray:
    """Standardised predictions, shape (n, n_outputs) (or (n,) for one output), for graphs or
    feature rows."""
    return predict_batches(model, _batches(inputs, batch_size), device)


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[Data | FeatureBatch], device: torch.device) -> np.ndarray:
    """``predict`` on batches already made (the validation batches, collated once per fit)."""
    model.eval()
    outs = [forward(model, b.to(device))[0].cpu() for b in batches]
    if not outs:
        return np.zeros(0)
    pred = torch.cat(outs).numpy()
    return pred[:, 0] if pred.shape[1] == 1 else pred


def masked_mae(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-task MAE over the labels present (NaN where a task has none)."""
    err = np.abs(as_matrix(pred) - as_matrix(y))
    present = ~np.isnan(err)
    if present.all():
        return err.mean(0)
    with np.errstate(invalid="ignore"):
        return np.where(present.any(0), np.nansum(err, 0) / np.maximum(present.sum(0), 1), np.nan)


class TrainBatches:
    """One epoch of training batches carrying standardised targets ``.y`` (B, T): PyG-collated
    graphs, or rows of a feature tensor (``.feat``). The order comes from ``sampler`` if given
    (budgets, DDP shards), else a fresh permutation from ``generator`` each epoch."""

    def __init__(self, inputs: Inputs, y: np.ndarray, batch_size: int, sampler: Sampler[int] | None,
                 generator: torch.Generator) -> None:
        self.batch_size, self.sampler, self.generator = batch_size, sampler, generator
        if isinstance(inputs, Tensor):
            self.feats, self.y, self.loader = inputs, torch.as_tensor(y, dtype=torch.float32), None
        else:
            data = with_targets(inputs, y)
            self.loader = DataLoader(data, batch_size=batch_size, sampler=sampler, shuffle=sampler is None,
                                     generator=None if sampler is not None else generator)
        self.n = len(inputs)

    def __iter__(self) -> Iterator[Data | FeatureBatch]:
        if self.loader is not None:
            return iter(self.loader)
        order = (torch.as_tensor(list(self.sampler)) if self.sampler is not None
                 else torch.randperm(self.n, generator=self.generator))
        return (FeatureBatch(self.feats[idx], self.y[idx]) for idx in order.split(self.batch_size))


class Trainer:
    """Epoch-by-epoch training, so a caller can report after every epoch (Ray Tune) and save and
    restore the whole state (model, optimiser, data order, early-stopping record) to resume.
    ``model`` may be DDP-wrapped (Ray Train): it trains as given, and validation, the best weights
    and the result use the module inside it."""

    def __init__(self, model: nn.Module, train: Inputs, y_train: np.ndarray, val: Inputs, y_val: np.ndarray,
                 opts: FitOptions, seed: int, mean: np.ndarray | float, std: np.ndarray | float,
                 device: torch.device | None = None, transform: LabelTransform | None = None) -> None:
        self.device = device or torch.device("cpu")
        torch.manual_seed(seed)
        self.model, self.opts = model.to(self.device), opts
        self.net: nn.Module = model.module if isinstance(model, DistributedDataParallel) else model
        self.mean, self.std = np.atleast_1d(np.asarray(mean, float)), np.atleast_1d(np.asarray(std, float))
        self.val, self.y_val = val, as_matrix(y_val)
        # the validation batches are the same every epoch: collated (and moved) once
        self.val_batches = [b.to(self.device) for b in _batches(val, 256)]
        self.generator = torch.Generator().manual_seed(seed)
        # labels in task units; a transform (one task) maps them first, and its inverse maps predictions back,
        # so every validation MAE stays in task units (``mean``/``std``: of the transformed labels)
        self.transform = transform
        y_fit = as_matrix(y_train) if transform is None else as_matrix(transform.forward(y_train))
        y_std = (y_fit - self.mean) / self.std
        self.batches = TrainBatches(train, y_std, opts.batch_size, opts.sampler, self.generator)
        # with every label present the masked loss equals the plain one, which is fewer ops per step
        self.loss = (masked_l1 if opts.loss == "l1" else
                     masked_mse if np.isnan(y_std).any() else F.mse_loss)
        if opts.objective == "binary":  # labels stay 0/1 (the caller passes mean 0, std 1); the model gives logits
            if not np.isin(as_matrix(y_train)[~np.isnan(as_matrix(y_train))], (0.0, 1.0)).all():
                raise ValueError("objective binary: training labels must be 0 or 1")
            self.loss = F.binary_cross_entropy_with_logits
        self.optimizer = (opts.make_optimizer(self.net) if opts.make_optimizer else
                          torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                           weight_decay=opts.weight_decay))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.epoch, self.best_score, self.best_epoch = 0, float("inf"), -1
        self.best_mae = np.full(len(self.mean), np.nan)
        self.best_state = copy.deepcopy(self.net.state_dict())
        self.history: list[dict[str, float]] = []
        self.seconds, self.seen = 0.0, 0

    @property
    def done(self) -> bool:
        patience = self.opts.patience
        return self.epoch >= self.opts.max_epochs or (patience is not None and self.epoch - 1 - self.best_epoch
                                                      >= patience and self.epoch > 0)

    def _set_lr(self) -> None:
        if self.opts.schedule == "cosine" or self.opts.warmup_epochs:
            cosine = self.opts.schedule == "cosine"
            frac = (1 + math.cos(math.pi * self.epoch / self.opts.max_epochs)) / 2 if cosine else 1.0
            warm = min(1.0, (self.epoch + 1) / (self.opts.warmup_epochs + 1))
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = warm * (self.opts.eta_min + (base - self.opts.eta_min) * frac if cosine else base)

    def run_epoch(self) -> dict[str, float]:
        """One pass over the training data and a validation pass; returns the epoch's record."""
        start = time.perf_counter()
        self._set_lr()
        if self.opts.on_epoch_start:
            self.opts.on_epoch_start(self.epoch)
        self.model.train()
        total, n_batches = 0.0, 0
        # DDP shards may differ by one sample, so the ranks' batch counts may too
        joined = self.model.join() if isinstance(self.model, DistributedDataParallel) else contextlib.nullcontext()
        with joined:
            for batch in self.batches:
                batch = batch.to(self.device)
                self.optimizer.zero_grad()
                pred, z = forward(self.model, batch)
                loss = self.loss(pred, batch.y)
                if self.opts.penalty is not None:
                    loss = loss + self.opts.penalty(z)
                value = loss.item()
                if not math.isfinite(value):  # before the step: the weights are never overwritten with NaN
                    self._diverged("training loss", value, n_batches)
                loss.backward()
                self.optimizer.step()
                total += value
                n_batches += 1
                self.seen += len(batch.y)
        pred = predict_batches(self.net, self.val_batches, self.device)
        if not np.isfinite(pred).all():  # a NaN prediction would pass as a missing label in the masked MAE
            self._diverged("validation prediction", float(pred[~np.isfinite(pred)].flat[0]))
        if self.opts.objective == "binary":  # early stopping and the grid read the validation log-loss
            logits, y = as_matrix(pred)[:, 0], self.y_val[:, 0]
            mae = np.array([float(np.mean(np.logaddexp(0, logits) - y * logits))])
        else:
            pred = pred * self.std + self.mean
            mae = masked_mae(pred if self.transform is None else self.transform.inverse(pred), self.y_val)
        score = float(np.nanmean(mae / self.std))
        record = {"epoch": self.epoch, "train_loss": total / max(n_batches, 1), "val_score": score,
                  **({"val_mae": float(mae[0])} if len(mae) == 1 else {})}
        self.history.append(record)
        if score < self.best_score:
            self.best_score, self.best_epoch, self.best_mae = score, self.epoch, mae
            self.best_state = copy.deepcopy(self.net.state_dict())
        self.epoch += 1
        self.seconds += time.perf_counter() - start
        epoch_done(self.opts.stage, self.opts.task)
        if self.opts.on_epoch_end:
            self.opts.on_epoch_end(record)
        return record

    def _diverged(self, what: str, value: float, batch: int | None = None) -> None:
        """Stop: a NaN or infinite loss means the model is garbage from here on (typically a
        learning rate too high for the data's scale)."""
        where = f", batch {batch}" if batch is not None else ""
        task = f"task '{self.opts.task}'" if self.opts.task else self.opts.stage
        setting = LR_SETTINGS.get(self.opts.stage, "the learning rate")
        rates = sorted({g["lr"] for g in self.optimizer.param_groups})
        now = ", ".join(f"{r:g}" for r in rates)
        raise TrainingDiverged(f"{task} ({self.opts.stage}), epoch {self.epoch}{where}: {what} is {value} "
                               f"(diverged at learning rate {now}); lower {setting}")

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "epoch": self.epoch, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "best_mae": self.best_mae, "best_state": self.best_state,
                "history": self.history, "seconds": self.seconds, "seen": self.seen,
                "trainable": [n for n, p in self.net.named_parameters() if p.requires_grad]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        trainable = set(state["trainable"])
        for n, p in self.net.named_parameters():  # gradual unfreezing may have opened layers
            p.requires_grad_(n in trainable)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        for key in ("epoch", "best_score", "best_epoch", "best_mae", "best_state", "history", "seconds", "seen"):
            setattr(self, key, state[key])

    def finish(self) -> TrainResult:
        """Restore the best-validation weights and summarise the run."""
        self.net.load_state_dict(self.best_state)
        best = float(self.best_mae[0]) if len(self.best_mae) == 1 else self.best_score
        return TrainResult(best, self.best_epoch, self.epoch, self.batches.n, len(self.val), self.seconds,
                           self.seen / max(self.seconds, 1e-9), [float(v) for v in self.best_mae], self.history)


def fit(model: nn.Module, train: Inputs, y_train: np.ndarray, val: Inputs, y_val: np.ndarray, opts: FitOptions,
        seed: int, mean: np.ndarray | float, std: np.ndarray | float, device: torch.device | None = None,
        transform: LabelTransform | None = None) -> TrainResult:
    """Train ``model`` in place until early stopping; ``train``/``val`` are graphs or feature rows,
    ``y_*`` are (n,) or (n, T), NaN = no label."""
    trainer = Trainer(model, train, y_train, val, y_val, opts, seed, mean, std, device, transform)
    while not trainer.done:
        trainer.run_epoch()
    return trainer.finish()
