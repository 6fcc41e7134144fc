"""Mixture of experts over frozen per-task encoders (after Chang et al., npj Comput. Mater. 2022).

Each expert is a pretrained task model's encoder. The layer adds their graph-level features
weighted by G = softmax(KeepTopK(theta, k)), theta one learned logit per expert, and a new head
predicts the target. A penalty lambda (theta^T theta - 1)^2 keeps the logits near the unit
sphere, so the softmax cannot collapse onto one expert early. Only the last encoder layer of each
expert, theta and the head train. Experts outside the top k cost nothing: they are not run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from tasksim_ray.config import ModelConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.models.heads import mlp_head


def top_k_gates(theta: Tensor, k: int) -> Tensor:
    """softmax over the k largest logits; exactly k non-zero entries that sum to one."""
    k = min(k, theta.numel())
    keep = torch.topk(theta, k).indices
    masked = torch.full_like(theta, float("-inf")).scatter(0, keep, theta[keep])
    return torch.softmax(masked, dim=0)


def initial_theta(n: int, init: str, similarity_row: np.ndarray | None, seed: int) -> Tensor:
    """Unit-norm starting logits: uniform (with seeded 1e-3 noise, so top-k ties break at random
    rather than by expert order), or a similarity row (the most similar experts start on top)."""
    if init == "similarity":
        if similarity_row is None or len(similarity_row) != n:
            raise TasksimError("moe.init 'similarity' needs a similarity row with one entry per expert")
        theta = torch.as_tensor(np.nan_to_num(similarity_row), dtype=torch.float32)
    else:
        g = torch.Generator().manual_seed(seed)
        theta = torch.ones(n) + 1e-3 * torch.randn(n, generator=g)
    return theta / theta.norm().clamp(min=1e-12)


class MixtureOfExperts(nn.Module):
    """``embed`` is the gated sum of expert features; ``head`` maps it to the target."""

    def __init__(self, experts: list[nn.Module], k: int, theta: Tensor, model_cfg: ModelConfig) -> None:
        super().__init__()
        dims = {e.embedding_dim for e in experts}
        if len(dims) != 1:
            raise TasksimError(f"moe: experts have different feature sizes {sorted(dims)}; "
                               "they must share one embedding dimension")
        self.experts = nn.ModuleList(experts)
        self.k = min(k, len(experts))
        self.theta = nn.Parameter(theta.clone())
        self.embedding_dim = dims.pop()
        self.ffn = mlp_head(self.embedding_dim, model_cfg.ffn_hidden_dim, model_cfg.ffn_layers,
                            model_cfg.dropout, 1)

    @property
    def head(self) -> nn.Module:
        return self.ffn

    def gates(self) -> Tensor:
        return top_k_gates(self.theta, self.k)

    def embed(self, batch: Batch, layer: str = "graph") -> Tensor:
        g = self.gates()
        active = torch.nonzero(g > 0).flatten().tolist()
        return sum(g[i] * self.experts[i].embed(batch, layer) for i in active)

    def gate_penalty(self) -> Tensor:
        return (self.theta @ self.theta - 1.0) ** 2
