"""Mixture of experts over pretrained encoders (after Chang et al., npj Comput. Mater. 2022).

The layer aggregates the experts' graph-level features weighted by G = softmax(KeepTopK(theta, k)),
theta one learned logit per expert, and a head predicts the target: by addition (the paper's
choice), concatenation, or as a learned weighted ensemble of one head per expert (the paper's
Table 1). A penalty (v^T v - 1)^2 on v = theta (default) or on the sparse gate vector G (the
paper's Eq. 4 and the published code) keeps the gates from collapsing onto one expert early.
Experts outside the top k cost nothing: they are not run.

Expert i's feature comes from one of three places, so the same model serves every setting:

- ``experts[i].embed(batch)``: whole expert modules (per-task models; ``moe_options`` leaves
  their last encoder layer trainable);
- ``tails[i]`` (an expert's last CGCNN convolution, trainable) applied to the atom features
  entering it, computed once by the frozen layers below (published CGCNN extractors):
  ``tail_inputs[i]`` holds them for every atom; each batch gathers its rows (``batch.atom_id``)
  for the selected experts only, and their k convolutions run as one (``stacked_convs``), so a
  step's cost depends on k, not on the number of experts;
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
from tasksim_ray.models.cgcnn import ConvLayer, Workspace, stacked_convs

AGGREGATIONS = ("add", "concat", "ensemble")


def top_k_gates(theta: Tensor, k: int) -> Tensor:
    """softmax over the k largest logits; exactly k non-zero entries that sum to one. Ties are
    broken by expert order (a stable sort; ``torch.topk`` breaks them in no documented order)."""
    k = min(k, theta.numel())
    keep = torch.sort(theta.detach(), descending=True, stable=True).indices[:k]
    masked = torch.full_like(theta, float("-inf")).scatter(0, keep, theta[keep])
    return torch.softmax(masked, dim=0)


def initial_theta(n: int, init: str, similarity_row: np.ndarray | None, seed: int) -> Tensor:
    """Starting logits. ``ones``: exactly a vector of ones (Chang et al. 2022, section 2.2.2), so
    with k = n the gates start exactly uniform; with k < n the tie is broken by expert order (the
    first k start selected). ``uniform``: ones plus seeded 1e-3 noise, unit norm, so top-k ties break at random.
    ``similarity``: a similarity row, unit norm (the most similar experts start on top)."""
    if init == "ones":
        return torch.ones(n)
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


class GatedHeads(nn.Module):
    """The ensemble's prediction sum_i G_i H_i(E_i(x)) from the experts' features (batch, m, d):
    each expert's own head, weighted by the gates; experts outside the top k are not run."""

    def __init__(self, heads: nn.ModuleList, gates: Tensor) -> None:
        super().__init__()
        self.heads, self.gates = heads, gates

    def forward(self, z: Tensor) -> Tensor:
        return sum(self.gates[i] * self.heads[i](z[:, i]) for i in torch.nonzero(self.gates > 0).flatten().tolist())


class MixtureOfExperts(nn.Module):
    """``embed`` gives the head's input, ``head`` maps it to the target. Give ``experts`` (modules),
    or ``tails`` with ``tail_inputs`` (last CGCNN convolutions on cached atom features), or neither
    (precomputed frozen features in ``batch.feat``); ``theta`` has one logit per expert.

    ``aggregation`` (Table 1 of the paper): ``add``, the gated sum (batch, d); ``concat``, the gated
    features side by side (batch, m * d), zeros for experts outside the top k; ``ensemble``, one head
    per expert (``head`` is then a list of m heads) and the gated sum of their predictions, ``embed``
    giving the ungated features (batch, m, d). The gates and their penalty are the same for all three."""

    def __init__(self, theta: Tensor, k: int, head: nn.Module | list[nn.Module], dim: int,
                 experts: list[nn.Module] | None = None, tails: list[ConvLayer] | None = None,
                 tail_inputs: list[Tensor] | None = None, penalty_on: str = "theta",
                 aggregation: str = "add") -> None:
        super().__init__()
        n = theta.numel()
        if experts is not None:
            dims = {e.embedding_dim for e in experts}
            if len(dims) != 1:
                raise TasksimError(f"moe: experts have different feature sizes {sorted(dims)}; "
                                   "they must share one embedding dimension")
        if aggregation not in AGGREGATIONS:
            raise TasksimError(f"moe.aggregation '{aggregation}': choose one of {list(AGGREGATIONS)}")
        if (aggregation == "ensemble") != isinstance(head, list) or (isinstance(head, list) and len(head) != n):
            raise TasksimError(f"moe: aggregation '{aggregation}' takes "
                               f"{'one head per expert' if aggregation == 'ensemble' else 'one head'}")
        self.k = min(k, n)
        self.theta = nn.Parameter(theta.clone(), requires_grad=n > 1)
        self.experts = nn.ModuleList(experts) if experts is not None else None
        self.tails = nn.ModuleList(tails) if tails is not None else None
        if tails is not None and (tail_inputs is None or len(tail_inputs) != len(tails)):
            raise TasksimError("moe: tails need one table of input atom features each (tail_inputs)")
        for i, table in enumerate(tail_inputs or []):  # data, not weights: kept out of the state dict
            self.register_buffer(f"tail_input_{i}", table, persistent=False)
        self.workspace = Workspace()  # what the tails' training steps keep for their backward pass
        # registered as "head" (state-dict names head.*) and read through the ``head`` property
        self._modules["head"] = nn.ModuleList(head) if isinstance(head, list) else head
        self.aggregation = aggregation
        self.embedding_dim = dim
        self.penalty_on = penalty_on

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        """The layers after ``embed``: ``head(embed(b)) == forward(b)`` (for the ensemble, built per
        call around the current gates)."""
        net = self._modules["head"]
        return GatedHeads(net, self.gates()) if self.aggregation == "ensemble" else net

    def gates(self) -> Tensor:
        return top_k_gates(self.theta, self.k)

    def features(self, batch: Batch, chosen: list[int], layer: str = "graph") -> Tensor:
        """The chosen experts' graph-level features, (batch, len(chosen), d)."""
        if self.experts is not None:
            return torch.stack([self.experts[i].embed(batch, layer) for i in chosen], 1)
        if self.tails is None:
            return batch.feat[:, chosen]
        h = torch.stack([getattr(self, f"tail_input_{i}").index_select(0, batch.atom_id) for i in chosen], 1)
        out = stacked_convs([self.tails[i] for i in chosen], h, batch.edge_index, batch.edge_attr, self.workspace)
        pooled = scatter(out.flatten(1), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")
        return F.softplus(pooled).view(batch.num_graphs, len(chosen), -1)

    def embed(self, batch: Batch, layer: str = "graph") -> Tensor:
        g = self.gates()
        chosen = torch.nonzero(g > 0).flatten()
        feats = self.features(batch, chosen.tolist(), layer)
        if self.aggregation == "add":
            return (feats * g[chosen, None]).sum(1)
        every = feats.new_zeros(len(feats), len(g), feats.shape[2])
        if self.aggregation == "concat":
            return every.index_copy(1, chosen, feats * g[chosen, None]).flatten(1)
        return every.index_copy(1, chosen, feats)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.embed(batch))

    def gate_penalty(self) -> Tensor:
        """(v^T v - 1)^2 with v = theta or the sparse gate vector (``penalty_on``)."""
        v = self.gates() if self.penalty_on == "gates" else self.theta
        return (v @ v - 1.0) ** 2
