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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from tasksim_ray.config import TrainConfig
from tasksim_ray.transfer.objectives import masked_mse


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

    @classmethod
    def from_train(cls, cfg: TrainConfig) -> FitOptions:
        return cls(cfg.max_epochs, cfg.patience, cfg.batch_size, cfg.lr, cfg.weight_decay)


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


def _with_targets(graphs: Sequence[Data], y: np.ndarray) -> list[Data]:
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


def fit(model: nn.Module, train_graphs: Sequence[Data], y_train: np.ndarray,
        val_graphs: Sequence[Data], y_val: np.ndarray, opts: FitOptions, seed: int,
        mean: np.ndarray | float, std: np.ndarray | float, device: torch.device | None = None) -> TrainResult:
    """Train ``model`` in place; ``y_*`` are (n,) or (n, T) in task units, NaN = no label."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model.to(device)
    mean, std = np.atleast_1d(np.asarray(mean, float)), np.atleast_1d(np.asarray(std, float))
    y_val = as_matrix(y_val)
    train_data = _with_targets(train_graphs, (as_matrix(y_train) - mean) / std)
    if opts.sampler is not None:
        loader = DataLoader(train_data, batch_size=opts.batch_size, sampler=opts.sampler)
    else:
        loader = DataLoader(train_data, batch_size=opts.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
    opt = (opts.make_optimizer(model) if opts.make_optimizer else
           torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=opts.lr,
                            weight_decay=opts.weight_decay))
    best_score, best_epoch, best_mae = float("inf"), -1, np.full(len(mean), np.nan)
    best_state = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    start, seen, epoch = time.perf_counter(), 0, 0
    for epoch in range(opts.max_epochs):
        if opts.on_epoch_start:
            opts.on_epoch_start(epoch)
        model.train()
        total, n_batches = 0.0, 0
        for batch in loader:
            batch = batch.to(device)
            opt.zero_grad()
            pred, z = forward(model, batch)
            loss = masked_mse(pred, batch.y)
            if opts.penalty is not None:
                loss = loss + opts.penalty(z)
            loss.backward()
            opt.step()
            total += loss.item()
            n_batches += 1
            seen += batch.num_graphs
        mae = masked_mae(predict(model, val_graphs, 256, device) * std + mean, y_val)
        score = float(np.nanmean(mae / std))
        history.append({"epoch": epoch, "train_loss": total / max(n_batches, 1), "val_score": score,
                        **({"val_mae": float(mae[0])} if len(mae) == 1 else {})})
        if score < best_score:
            best_score, best_epoch, best_mae = score, epoch, mae
            best_state = copy.deepcopy(model.state_dict())
        elif opts.patience is not None and epoch - best_epoch >= opts.patience:
            break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    best = float(best_mae[0]) if len(best_mae) == 1 else best_score
    return TrainResult(best, best_epoch, epoch + 1, len(train_data), len(val_graphs), seconds,
                       seen / max(seconds, 1e-9), [float(v) for v in best_mae], history)
