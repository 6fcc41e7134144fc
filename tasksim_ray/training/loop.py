"""The one training loop: single-task, multi-task (masked loss) and fine-tuning share it.

Targets are standardised per task with the training mean and std, and a label that is missing
(NaN) contributes nothing to the loss. Validation MAE is reported in each task's units; early
stopping watches the mean standardised MAE (for one task, the same order as its MAE). The
best-validation weights are restored at the end, so the returned model is the early-stopped one.
Penalties (L2-SP, BSS, a gate penalty) and per-epoch hooks (gradual unfreezing) plug in through
:class:`FitOptions`, so every experiment trains the same way.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Sampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from tasksim_ray.config import TrainConfig
from tasksim_ray.infra.metrics import epoch_done
from tasksim_ray.training.objectives import masked_mse


@dataclass
class FitOptions:
    """How to train. ``patience=None`` trains every epoch (a fixed budget) and still keeps the
    best-validation weights. ``make_optimizer`` builds the optimiser from the model (parameter
    groups, per-layer learning rates); by default Adam over the trainable parameters."""

    max_epochs: int
    patience: int | None
    batch_size: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None
    penalty: Callable[[Tensor], Tensor] | None = None  # receives the batch's graph features
    on_epoch_start: Callable[[int], None] | None = None
    sampler: Sampler[int] | None = None
    stage: str = "train"  # metric tags: what this training is, and for which task
    task: str = ""

    @classmethod
    def from_train(cls, cfg: TrainConfig, task: str = "") -> FitOptions:
        return cls(cfg.max_epochs, cfg.patience, cfg.batch_size, cfg.lr, cfg.weight_decay, stage="pretrain", task=task)


@dataclass
class TrainResult:
    best_val_mae: float  # one task: MAE in its units; several: mean standardised MAE
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


def forward(model: nn.Module, batch: Data) -> tuple[Tensor, Tensor]:
    """Graph features and predictions: every backbone exposes ``embed`` and ``head``."""
    z = model.embed(batch)
    return model.head(z), z


@torch.no_grad()
def predict(model: nn.Module, graphs: Sequence[Data], batch_size: int, device: torch.device) -> np.ndarray:
    """Standardised predictions, shape (n_graphs, n_outputs) (or (n_graphs,) for one output)."""
    model.eval()
    outs = [forward(model, b.to(device))[0].cpu() for b in DataLoader(list(graphs), batch_size=batch_size)]
    if not outs:
        return np.zeros(0)
    pred = torch.cat(outs).numpy()
    return pred[:, 0] if pred.shape[1] == 1 else pred


def masked_mae(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-task MAE over the labels present (NaN where a task has none)."""
    err = np.abs(as_matrix(pred) - as_matrix(y))
    present = ~np.isnan(err)
    with np.errstate(invalid="ignore"):
        return np.where(present.any(0), np.nansum(err, 0) / np.maximum(present.sum(0), 1), np.nan)


class Trainer:
    """Epoch-by-epoch training, so a caller can report after every epoch (Ray Tune) and save and
    restore the whole state (model, optimiser, data order, early-stopping record) to resume."""

    def __init__(self, model: nn.Module, train_graphs: Sequence[Data], y_train: np.ndarray,
                 val_graphs: Sequence[Data], y_val: np.ndarray, opts: FitOptions, seed: int,
                 mean: np.ndarray | float, std: np.ndarray | float, device: torch.device | None = None) -> None:
        self.device = device or torch.device("cpu")
        torch.manual_seed(seed)
        self.model, self.opts = model.to(self.device), opts
        self.mean, self.std = np.atleast_1d(np.asarray(mean, float)), np.atleast_1d(np.asarray(std, float))
        self.val_graphs, self.y_val = val_graphs, as_matrix(y_val)
        self.train_data = with_targets(train_graphs, (as_matrix(y_train) - self.mean) / self.std)
        self.generator = torch.Generator().manual_seed(seed)
        if opts.sampler is not None:
            self.loader = DataLoader(self.train_data, batch_size=opts.batch_size, sampler=opts.sampler)
        else:
            self.loader = DataLoader(self.train_data, batch_size=opts.batch_size, shuffle=True,
                                     generator=self.generator)
        self.optimizer = (opts.make_optimizer(model) if opts.make_optimizer else
                          torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                                           weight_decay=opts.weight_decay))
        self.epoch, self.best_score, self.best_epoch = 0, float("inf"), -1
        self.best_mae = np.full(len(self.mean), np.nan)
        self.best_state = copy.deepcopy(model.state_dict())
        self.history: list[dict[str, float]] = []
        self.seconds, self.seen = 0.0, 0

    @property
    def done(self) -> bool:
        patience = self.opts.patience
        return self.epoch >= self.opts.max_epochs or (patience is not None and self.epoch - 1 - self.best_epoch
                                                      >= patience and self.epoch > 0)

    def run_epoch(self) -> dict[str, float]:
        """One pass over the training data and a validation pass; returns the epoch's record."""
        start = time.perf_counter()
        if self.opts.on_epoch_start:
            self.opts.on_epoch_start(self.epoch)
        self.model.train()
        total, n_batches = 0.0, 0
        for batch in self.loader:
            batch = batch.to(self.device)
            self.optimizer.zero_grad()
            pred, z = forward(self.model, batch)
            loss = masked_mse(pred, batch.y)
            if self.opts.penalty is not None:
                loss = loss + self.opts.penalty(z)
            loss.backward()
            self.optimizer.step()
            total += loss.item()
            n_batches += 1
            self.seen += batch.num_graphs
        mae = masked_mae(predict(self.model, self.val_graphs, 256, self.device) * self.std + self.mean, self.y_val)
        score = float(np.nanmean(mae / self.std))
        record = {"epoch": self.epoch, "train_loss": total / max(n_batches, 1), "val_score": score,
                  **({"val_mae": float(mae[0])} if len(mae) == 1 else {})}
        self.history.append(record)
        if score < self.best_score:
            self.best_score, self.best_epoch, self.best_mae = score, self.epoch, mae
            self.best_state = copy.deepcopy(self.model.state_dict())
        self.epoch += 1
        self.seconds += time.perf_counter() - start
        epoch_done(self.opts.stage, self.opts.task)
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "epoch": self.epoch, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "best_mae": self.best_mae, "best_state": self.best_state,
                "history": self.history, "seconds": self.seconds, "seen": self.seen,
                "trainable": [n for n, p in self.model.named_parameters() if p.requires_grad]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        trainable = set(state["trainable"])
        for n, p in self.model.named_parameters():  # gradual unfreezing may have opened layers
            p.requires_grad_(n in trainable)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        for key in ("epoch", "best_score", "best_epoch", "best_mae", "best_state", "history", "seconds", "seen"):
            setattr(self, key, state[key])

    def finish(self) -> TrainResult:
        """Restore the best-validation weights and summarise the run."""
        self.model.load_state_dict(self.best_state)
        best = float(self.best_mae[0]) if len(self.best_mae) == 1 else self.best_score
        return TrainResult(best, self.best_epoch, self.epoch, len(self.train_data), len(self.val_graphs),
                           self.seconds, self.seen / max(self.seconds, 1e-9), [float(v) for v in self.best_mae],
                           self.history)


def fit(model: nn.Module, train_graphs: Sequence[Data], y_train: np.ndarray,
        val_graphs: Sequence[Data], y_val: np.ndarray, opts: FitOptions, seed: int,
        mean: np.ndarray | float, std: np.ndarray | float, device: torch.device | None = None) -> TrainResult:
    """Train ``model`` in place until early stopping; ``y_*`` are (n,) or (n, T), NaN = no label."""
    trainer = Trainer(model, train_graphs, y_train, val_graphs, y_val, opts, seed, mean, std, device)
    while not trainer.done:
        trainer.run_epoch()
    return trainer.finish()


def cosine_lr(optimizer: torch.optim.Optimizer, t_max: int, eta_min: float) -> Callable[[int], None]:
    """An epoch hook giving each parameter group lr = eta_min + (base - eta_min)(1 + cos(pi e / T)) / 2,
    as CosineAnnealingLR stepped once per epoch."""
    base = [g["lr"] for g in optimizer.param_groups]

    def set_lr(epoch: int) -> None:
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2

    return set_lr


def fit_features(model: nn.Module, feats: Tensor, y: np.ndarray, train: np.ndarray, val: np.ndarray,
                 optimizer: torch.optim.Optimizer, opts: FitOptions, seed: int, mean: float,
                 std: float) -> TrainResult:
    """:func:`fit` for a model over precomputed features ``feats`` (n, experts, d), read as
    ``Data(feat=...)``: plain tensor batches (graph collation would cost more than the model), the
    same standardised MSE, early stopping on validation MAE and restoring of the best weights."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_tr, x_val = feats[train], feats[val]
    y_tr = torch.as_tensor((y[train] - mean) / std, dtype=torch.float32)
    best, best_epoch, best_state, epoch = math.inf, -1, copy.deepcopy(model.state_dict()), 0
    start = time.perf_counter()
    while epoch < opts.max_epochs and (opts.patience is None or epoch - 1 - best_epoch < opts.patience):
        if opts.on_epoch_start is not None:
            opts.on_epoch_start(epoch)
        model.train()
        for idx in torch.randperm(len(train), generator=gen).split(opts.batch_size):
            optimizer.zero_grad()
            z = model.embed(Data(feat=x_tr[idx]))
            loss = F.mse_loss(model.head(z).squeeze(1), y_tr[idx])
            if opts.penalty is not None:
                loss = loss + opts.penalty(z)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            pred = model(Data(feat=x_val)).squeeze(1).numpy() * std + mean
        mae = float(np.mean(np.abs(pred - y[val])))
        if mae < best:
            best, best_epoch, best_state = mae, epoch, copy.deepcopy(model.state_dict())
        epoch += 1
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    return TrainResult(best, best_epoch, epoch, len(train), len(val), seconds, epoch * len(train) / max(seconds, 1e-9))
