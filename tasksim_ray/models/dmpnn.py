"""Chemprop-style directed message-passing network (D-MPNN), written with PyG.

Messages live on directed bonds: h0_vw = W_i [x_v, e_vw], h_vw = ReLU(h0_vw); each step sums the
messages arriving at v except the one coming back from w, h_vw <- ReLU(h0_vw + W_h m_vw); atoms then
read out m_v = sum of incoming messages, h_v = ReLU(W_o [x_v, m_v]), and the molecule vector
aggregates the atoms: ``mean``, ``sum``, or ``norm`` (sum / 100, Chemprop v2's default, which keeps
size information for extensive targets such as energies). ``embed`` returns that molecule vector:
the representation RSA compares.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.featurize.molecule import ATOM_FDIM, BOND_FDIM
from tasksim_ray.models.heads import mlp_head

NORM_DIVISOR = 100.0


class DMPNN(nn.Module):
    LAYERS = ("graph", "ffn")
    # encoder layer groups, input to output: what fine-tuning strategies freeze and unfreeze
    # (W_h is one weight shared by every message-passing step; W_o is the last encoder layer)
    ENCODER_LAYERS = ("W_i", "W_h", "W_o")

    def __init__(self, hidden_dim: int = 300, depth: int = 3, dropout: float = 0.0,
                 aggregation: str = "norm", ffn_hidden_dim: int = 300, ffn_layers: int = 2,
                 n_tasks: int = 1, atom_dim: int = ATOM_FDIM, bond_dim: int = BOND_FDIM) -> None:
        super().__init__()
        self.depth, self.aggregation = depth, aggregation
        self.W_i = nn.Linear(atom_dim + bond_dim, hidden_dim, bias=False)
        self.W_h = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.W_o = nn.Linear(atom_dim + hidden_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self._ffn_shape = (ffn_hidden_dim, ffn_layers, dropout)
        self.ffn = self._new_ffn(n_tasks)

    def _new_ffn(self, n_outputs: int) -> nn.Sequential:
        hidden, n_layers, dropout = self._ffn_shape
        return mlp_head(self.embedding_dim, hidden, n_layers, dropout, n_outputs)

    @property
    def embedding_dim(self) -> int:
        return self.W_o.out_features

    @property
    def head(self) -> nn.Module:
        """The prediction head on top of ``embed``: the feed-forward network."""
        return self.ffn

    def reset_head(self, n_outputs: int = 1) -> None:
        """A freshly initialised head for a new target (fine-tuning keeps only the encoder)."""
        self.ffn = self._new_ffn(n_outputs).to(self.W_o.weight.device)

    def embed_nodes(self, batch: Batch) -> Tensor:
        """Per-atom hidden states after message passing, shape (n_atoms, hidden_dim)."""
        x, (src, dst) = batch.x, batch.edge_index
        n_atoms = x.shape[0]
        h0 = self.W_i(torch.cat([x[src], batch.edge_attr], dim=1))  # pre-activation, as in Chemprop
        h = torch.relu(h0)
        rev = torch.arange(h.shape[0], device=h.device) ^ 1  # reverse edge of e is e ^ 1
        for _ in range(self.depth - 1):
            incoming = scatter(h, dst, dim=0, dim_size=n_atoms, reduce="sum")
            m = incoming[src] - h[rev]
            h = self.dropout(torch.relu(h0 + self.W_h(m)))
        m_atom = scatter(h, dst, dim=0, dim_size=n_atoms, reduce="sum")
        return self.dropout(torch.relu(self.W_o(torch.cat([x, m_atom], dim=1))))

    def embed(self, batch: Batch, layer: str = "graph") -> Tensor:
        """Graph-level latent vectors, shape (n_graphs, dim): ``graph`` is the aggregated molecule
        vector (hidden_dim), ``ffn`` the last hidden layer of the prediction head."""
        if layer not in self.LAYERS:
            raise ValueError(f"unknown layer '{layer}'; layers: {self.LAYERS}")
        h_atom = self.embed_nodes(batch)
        reduce = "mean" if self.aggregation == "mean" else "sum"
        pooled = scatter(h_atom, batch.batch, dim=0, dim_size=batch.num_graphs, reduce=reduce)
        if self.aggregation == "norm":
            pooled = pooled / NORM_DIVISOR
        return self.ffn[:-1](pooled) if layer == "ffn" else pooled

    def forward(self, batch: Batch) -> Tensor:
        return self.ffn(self.embed(batch))
