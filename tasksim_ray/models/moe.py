"""Mixture of experts over pretrained encoders (after Chang et al., npj Comput. Mater. 2022).

The layer adds the experts' graph-level features weighted by G = softmax(KeepTopK(theta, k)),
theta one learned logit per expert, and a head predicts the target. A penalty (v^T v - 1)^2 on
v = theta (default) or on the sparse gate vector G (the published code) keeps the gates from
collapsing onto one expert early. Experts outside the top k cost nothing: they are not run.

Expert i's feature comes from one of three places, so the same model serves every setting:

- ``experts[i].embed(batch)``: whole expert modules (per-task models; ``moe_options`` leaves
  their last encoder layer trainable);
- ``tails[i]`` (an expert's last convolution, trainable) applied to the atom features entering it,
  computed once by the frozen layers below (published CGCNN extractors): ``tail_inputs[i]`` holds
  them for every atom and each batch gathers its rows (``batch.atom_id``) for the selected experts
  only, so a step's cost depends on k, not on the number of experts;
- ``batch.feat[:, i]``: the pooled feature of a completely frozen expert, computed once.

Transfer learning from one extractor with a new head is the one-expert case (the gate is 1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.errors import TasksimError


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


def softplus_head(in_dim: int, hidden: int, n_layers: int) -> nn.Sequential:
    """The published MoE/TL head: ``n_layers`` linear layers with softplus between them."""
    layers: list[nn.Module] = []
    for _ in range(n_layers - 1):
        layers += [nn.Linear(in_dim, hidden), nn.Softplus()]
        in_dim = hidden
    return nn.Sequential(*layers, nn.Linear(in_dim, 1))


class MixtureOfExperts(nn.Module):
    """``embed`` is the gated sum of expert features; ``head`` maps it to the target. Give
    ``experts`` (modules), or ``tails`` with ``tail_inputs`` (last layers on cached atom features),
    or neither (precomputed frozen features in ``batch.feat``); ``theta`` has one logit per expert."""

    def __init__(self, theta: Tensor, k: int, head: nn.Module, dim: int, experts: list[nn.Module] | None = None,
                 tails: list[nn.Module] | None = None, tail_inputs: list[Tensor] | None = None,
                 penalty_on: str = "theta") -> None:
        super().__init__()
        n = theta.numel()
        if experts is not None:
            dims = {e.embedding_dim for e in experts}
            if len(dims) != 1:
                raise TasksimError(f"moe: experts have different feature sizes {sorted(dims)}; "
                                   "they must share one embedding dimension")
        self.k = min(k, n)
        self.theta = nn.Parameter(theta.clone(), requires_grad=n > 1)
        self.experts = nn.ModuleList(experts) if experts is not None else None
        self.tails = nn.ModuleList(tails) if tails is not None else None
        if tails is not None and (tail_inputs is None or len(tail_inputs) != len(tails)):
            raise TasksimError("moe: tails need one table of input atom features each (tail_inputs)")
        for i, table in enumerate(tail_inputs or []):  # data, not weights: kept out of the state dict
            self.register_buffer(f"tail_input_{i}", table, persistent=False)
        self.head = head
        self.embedding_dim = dim
        self.penalty_on = penalty_on

    def gates(self) -> Tensor:
        return top_k_gates(self.theta, self.k)

    def expert_feature(self, i: int, batch: Batch, layer: str) -> Tensor:
        if self.experts is not None:
            return self.experts[i].embed(batch, layer)
        if self.tails is not None:
            h_in = getattr(self, f"tail_input_{i}").index_select(0, batch.atom_id)
            h = self.tails[i](h_in, batch.edge_index, batch.edge_attr)
            return F.softplus(scatter(h, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean"))
        return batch.feat[:, i]

    def embed(self, batch: Batch, layer: str = "graph") -> Tensor:
        g = self.gates()
        return sum(g[i] * self.expert_feature(i, batch, layer) for i in torch.nonzero(g > 0).flatten().tolist())

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.embed(batch))

    def gate_penalty(self) -> Tensor:
        """(v^T v - 1)^2 with v = theta or the sparse gate vector (``penalty_on``)."""
        v = self.gates() if self.penalty_on == "gates" else self.theta
        return (v @ v - 1.0) ** 2
