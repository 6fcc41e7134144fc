"""Single-task supervised training with early stopping on validation MAE.

Targets are standardised with the training mean and std; MAE is reported in the task's units.
The best-validation weights are restored at the end, so the saved model is the early-stopped one.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from tasksim_ray.config import TrainConfig


@dataclass
class TrainResult:
    best_val_mae: float
    best_epoch: int
    epochs_run: int
    n_train: int
    n_val: int
    seconds: float
    molecules_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def _with_targets(graphs: Sequence[Data], y: np.ndarray) -> list[Data]:
    out = []
    for g, v in zip(graphs, y):
        g = copy.copy(g)
        g.y = torch.tensor([[v]], dtype=torch.float32)
        out.append(g)
    return out


@torch.no_grad()
def predict(model: nn.Module, graphs: Sequence[Data], batch_size: int, device: torch.device) -> np.ndarray:
    model.eval()
    outs = [model(b.to(device)).squeeze(-1).cpu() for b in DataLoader(list(graphs), batch_size=batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros(0)


def fit(model: nn.Module, train_graphs: Sequence[Data], y_train: np.ndarray,
        val_graphs: Sequence[Data], y_val: np.ndarray, cfg: TrainConfig, seed: int,
        mean: float, std: float, device: torch.device | None = None) -> TrainResult:
    """Train ``model`` in place on standardised targets; returns the early-stopping record."""
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    model.to(device)
    train_data = _with_targets(train_graphs, (y_train - mean) / std)
    loader = DataLoader(train_data, batch_size=cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best_mae, best_epoch, best_state = float("inf"), -1, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    start, seen = time.perf_counter(), 0
    epoch = 0
    for epoch in range(cfg.max_epochs):
        model.train()
        total = 0.0
        for batch in loader:
            batch = batch.to(device)
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(batch), batch.y)
            loss.backward()
            opt.step()
            total += loss.item() * batch.num_graphs
            seen += batch.num_graphs
        val_pred = predict(model, val_graphs, 256, device) * std + mean
        val_mae = float(np.mean(np.abs(val_pred - y_val)))
        history.append({"epoch": epoch, "train_mse_std": total / len(train_data), "val_mae": val_mae})
        if val_mae < best_mae:
            best_mae, best_epoch, best_state = val_mae, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - start
    return TrainResult(best_mae, best_epoch, epoch + 1, len(train_data), len(val_graphs), seconds,
                       seen / max(seconds, 1e-9), history)
