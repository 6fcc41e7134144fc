"""CGCNN (Xie & Grossman, PRL 2018) on PyG edge lists, state-dict compatible with the published models.

Each convolution updates atom i from its edges (j -> i, bond features u_ij):
z_ij = BN1(W [v_i, v_j, u_ij] + b), split into filter and core halves,
v_i <- softplus(v_i + BN2(sum_j sigmoid(filter_ij) * softplus(core_ij))). The crystal vector is
the mean of the atoms after the last convolution; the head is softplus -> ``conv_to_fc`` ->
softplus (-> ``fcs`` with softplus) -> ``fc_out`` (log-softmax over 2 classes for a classifier).
Parameter names match txie-93/cgcnn, so the published checkpoints load with ``strict=True``.
Graphs come from :func:`tasksim_ray.featurize.crystal.structure_to_graph`.

Which tensor ``embed`` returns: the mixture-of-experts study (Chang et al., npj Comput. Mater.
2022; rees-c/MoE ``get_extractor``, default ``layer_to_extract_from='conv'``) takes as an
extractor's feature softplus(mean-pooled atom features after the last convolution), the input of
``conv_to_fc``. That is the default layer ``conv`` (64-dim); ``fc`` is the last hidden layer of
the head (the input of ``fc_out``, 32-dim). Its fine-tuning default unfreezes the last convolution
only (``num_layers_to_unfreeze=1``), so the last encoder group is ``convs.{n_conv-1}`` and the
``last`` strategy reproduces it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.config import CrystalGraphConfig


class ConvLayer(nn.Module):
    """One gated graph convolution; ``fc_full``, ``bn1`` and ``bn2`` as in the original."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        # W [v_i, v_j, u_ij] = W_i v_i + W_j v_j + W_u u_ij: the atom terms are computed once per atom
        # and gathered per bond (12 bonds an atom), 2x faster than the matmul over the concatenated
        # bond rows (benchmarks/crystal_epoch.py); equal up to float rounding
        nbr, centre = edge_index
        a, weight = h.shape[1], self.fc_full.weight
        per_bond = torch.addmm(self.fc_full.bias, edge_attr, weight[:, 2 * a:].t())
        gated = self.bn1(per_bond + F.linear(h, weight[:, :a]).index_select(0, centre)
                         + F.linear(h, weight[:, a:2 * a]).index_select(0, nbr))
        filt, core = gated.chunk(2, dim=1)
        summed = scatter(torch.sigmoid(filt) * F.softplus(core), centre, dim=0, dim_size=h.shape[0], reduce="sum")
        return F.softplus(h + self.bn2(summed))


class CGCNN(nn.Module):
    LAYERS = ("conv", "fc")
    NODE_LAYERS = ("conv", "last_input")  # atom features after every convolution / entering the last one
    GRAPH_WIDTHS = ("nbr_fea_len",)  # fixed by the graphs: config validation refuses another value

    @staticmethod
    def graph_hparams(graph: CrystalGraphConfig) -> dict[str, Any]:
        """The bond-feature width the graphs of ``data.graph`` have: one per Gaussian centre."""
        from tasksim_ray.featurize.crystal import GraphSettings

        return {"nbr_fea_len": len(GraphSettings.from_config(graph).centres)}

    def __init__(self, orig_atom_fea_len: int = 92, nbr_fea_len: int = 41, atom_fea_len: int = 64,
                 n_conv: int = 4, h_fea_len: int = 32, n_h: int = 1, classification: bool = False,
                 n_tasks: int = 1) -> None:
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList([ConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv)])
        # encoder layer groups, input to output; one group per convolution, the last one last
        self.ENCODER_LAYERS = ("embedding", *(f"convs.{i}" for i in range(n_conv)))
        self._head_shape = (h_fea_len, n_h)
        self._new_head(2 if classification else n_tasks, classification)

    def _new_head(self, n_outputs: int, classification: bool) -> None:
        h_fea_len, n_h = self._head_shape
        self.classification = classification
        self.conv_to_fc = nn.Linear(self.embedding_dim, h_fea_len)
        if n_h > 1:
            self.fcs = nn.ModuleList([nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1)])
            self.softpluses = nn.ModuleList([nn.Softplus() for _ in range(n_h - 1)])
        self.fc_out = nn.Linear(h_fea_len, n_outputs)
        self.dropout = nn.Dropout() if classification else nn.Identity()  # no parameters: state dict unchanged

    @property
    def embedding_dim(self) -> int:
        return self.embedding.out_features

    def _hidden(self) -> list[nn.Module]:
        """The head up to (not including) ``fc_out``; softplus of ``embed`` is its input."""
        layers: list[nn.Module] = [self.conv_to_fc, nn.Softplus(), self.dropout]
        for i in range(self._head_shape[1] - 1):
            layers += [self.fcs[i], self.softpluses[i]]
        return layers

    @property
    def head(self) -> nn.Sequential:
        """The layers after ``embed``: ``head(embed(b)) == forward(b)``. Built on the fly from the
        model's own modules, so its parameters are the model's."""
        tail = [nn.LogSoftmax(dim=1)] if self.classification else []
        return nn.Sequential(*self._hidden(), self.fc_out, *tail)

    def reset_head(self, n_outputs: int = 1) -> None:
        """A freshly initialised regression head (``conv_to_fc``, ``fcs``, ``fc_out``) for a new target."""
        self._new_head(n_outputs, classification=False)
        self.to(self.embedding.weight.device)

    def embed_nodes(self, batch: Batch, layer: str = "conv") -> Tensor:
        """Atom features, shape (n_atoms, atom_fea_len): ``conv`` after the last convolution,
        ``last_input`` entering it (what a mixture of experts whose last convolutions train reads)."""
        if layer not in self.NODE_LAYERS:
            raise ValueError(f"unknown node layer '{layer}'; node layers: {self.NODE_LAYERS}")
        h = self.embedding(batch.x)
        for conv in self.convs if layer == "conv" else self.convs[:-1]:
            h = conv(h, batch.edge_index, batch.edge_attr)
        return h

    def embed(self, batch: Batch, layer: str = "conv") -> Tensor:
        """Graph-level features, shape (n_graphs, dim): ``conv`` is softplus of the mean-pooled atom
        features (the mixture-of-experts extractor feature), ``fc`` the input of ``fc_out``."""
        if layer not in self.LAYERS:
            raise ValueError(f"unknown layer '{layer}'; layers: {self.LAYERS}")
        pooled = scatter(self.embed_nodes(batch), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")
        feature = F.softplus(pooled)
        return nn.Sequential(*self._hidden())(feature) if layer == "fc" else feature

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.embed(batch))
