"""Models of the crystal MoE study: extractor features and gated experts.

A transferred extractor is frozen except (at most) its last convolution, so everything below that
convolution is computed once per task (:func:`extractor_features`): the atom features entering the
last convolution, and the pooled feature after it. :class:`GatedExperts` then trains either the
experts' last convolutions on those atom features (the published setting) or nothing of the
experts at all, on the pooled features (``freeze_last_conv``); both train in
``tasksim_ray.training.loop.fit`` (pooled features as plain tensor batches). Transfer learning (TL) is the one-
expert case with the gate fixed at 1. The frozen layers run in eval mode (their batch-norm uses the
source task's statistics); the published code left them in train mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from tasksim_ray.models.cgcnn import CGCNN, ConvLayer
from tasksim_ray.models.moe import top_k_gates


@torch.no_grad()
def extractor_features(model: CGCNN, graphs: list[Data], batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(atom features entering the last convolution, (n_atoms, d); softplus of the mean-pooled atom
    features after it, (n_graphs, d), i.e. ``model.embed``), in eval mode."""
    model.eval()
    atoms, pooled = [], []
    for b in DataLoader(graphs, batch_size=batch_size):
        h = model.embedding(b.x)
        for conv in model.convs[:-1]:
            h = conv(h, b.edge_index, b.edge_attr)
        atoms.append(h)
        last = model.convs[-1](h, b.edge_index, b.edge_attr)
        pooled.append(F.softplus(scatter(last, b.batch, dim=0, dim_size=b.num_graphs, reduce="mean")))
    return torch.cat(atoms), torch.cat(pooled)


def softplus_head(in_dim: int, hidden: int, n_layers: int) -> nn.Sequential:
    """The published MoE/TL head: ``n_layers`` linear layers with softplus between them."""
    layers: list[nn.Module] = []
    for _ in range(n_layers - 1):
        layers += [nn.Linear(in_dim, hidden), nn.Softplus()]
        in_dim = hidden
    return nn.Sequential(*layers, nn.Linear(in_dim, 1))


class GatedExperts(nn.Module):
    """sum_i G_i f_i over the experts with non-zero gate, G = softmax(KeepTopK(theta, k)), then the
    head. ``f_i`` is expert i's pooled feature: ``batch.feat[:, i]`` (precomputed, frozen experts)
    or its trainable last convolution ``tails[i]`` applied to ``batch.h_in[:, i]``."""

    def __init__(self, n_experts: int, k: int, theta: Tensor, head_layers: int, tails: list[ConvLayer] | None = None,
                 dim: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.k = min(k, n_experts)
        self.theta = nn.Parameter(theta.clone(), requires_grad=n_experts > 1)
        self.tails = nn.ModuleList(tails) if tails is not None else None
        self.head = softplus_head(dim, hidden, head_layers)

    def gates(self) -> Tensor:
        return top_k_gates(self.theta, self.k)

    def expert_feature(self, i: int, batch: Data) -> Tensor:
        if self.tails is None:
            return batch.feat[:, i]
        h = self.tails[i](batch.h_in[:, i], batch.edge_index, batch.edge_attr)
        return F.softplus(scatter(h, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean"))

    def embed(self, batch: Data) -> Tensor:
        g = self.gates()
        return sum(g[i] * self.expert_feature(i, batch) for i in torch.nonzero(g > 0).flatten().tolist())

    def forward(self, batch: Data) -> Tensor:
        return self.head(self.embed(batch))

    def penalty(self, on: str) -> Tensor:
        """(G^T G - 1)^2 on the sparse gate vector (published code) or (theta^T theta - 1)^2."""
        v = self.gates() if on == "gates" else self.theta
        return (v @ v - 1.0) ** 2
