"""ALIGNN (Choudhary & DeCost 2021) as a crystal backbone: the pure-PyTorch ``alignn_atomwise_pure``
model, no DGL.

alignn's torch graph builder makes, from a jarvis ``Atoms``, the periodic atom graph (the
``max_neighbors`` nearest neighbours within ``cutoff``, across cell images; edge vectors include
the image shift) and its line graph (bond pairs sharing an atom, carrying the bond-angle cosine).
The encoder runs the model's embeddings, ALIGNN layers (atom and line graph) and edge-gated GCN
layers exactly as its forward does; per-atom features are the atom features after the last layer
and the crystal vector is their pool, the features ALIGNN's final ``fc`` reads (mean by default,
as ALIGNN pools). That ``fc`` is not used: the head replaces it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Batch

from tasksim_ray.config import CrystalGraphConfig
from tasksim_ray.models.structures import CrystalBackbone, to_jarvis, with_parameters


class ALIGNNBackbone(CrystalBackbone):
    """Small defaults for CPU training. ``atom_features`` is a jarvis node-feature set ("cgcnn",
    92 per element; "cfid", "basic", "atomic_number"); ``three_body_cutoff`` (default: ``cutoff``)
    limits which bonds form angle triplets."""

    def __init__(self, alignn_layers: int = 2, gcn_layers: int = 2, hidden_features: int = 64,
                 embedding_features: int = 32, edge_input_features: int = 80,
                 triplet_input_features: int = 40, atom_features: str = "cgcnn", cutoff: float = 8.0,
                 three_body_cutoff: float | None = None, max_neighbors: int = 12, pooling: str = "mean",
                 dropout: float = 0.0, ffn_hidden_dim: int = 128, ffn_layers: int = 2,
                 n_tasks: int = 1, graph_cache: int = 2048) -> None:
        from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig
        from jarvis.core.specie import get_node_attributes

        super().__init__(pooling, dropout, ffn_hidden_dim, ffn_layers, graph_cache)
        self.graph_args = {"atom_features": atom_features, "two_body_cutoff": cutoff,
                           "three_body_cutoff": three_body_cutoff, "max_neighbors": max_neighbors}
        config = ALIGNNAtomWisePureConfig(
            name="alignn_atomwise_pure", alignn_layers=alignn_layers, gcn_layers=gcn_layers,
            atom_input_features=len(get_node_attributes("H", atom_features=atom_features)),
            edge_input_features=edge_input_features, triplet_input_features=triplet_input_features,
            embedding_features=embedding_features, hidden_features=hidden_features,
            calculate_gradient=False, use_zbl=False)
        self.alignn = ALIGNNAtomWisePure(config)
        blocks = [f"alignn.alignn_layers.{i}" for i in range(alignn_layers)]
        blocks += [f"alignn.gcn_layers.{i}" for i in range(gcn_layers)]
        self.ENCODER_LAYERS = with_parameters(
            self, ["alignn.atom_embedding", "alignn.edge_embedding", "alignn.angle_embedding", *blocks])
        self.embedding_dim = hidden_features
        self._init_head(n_tasks)

    @staticmethod
    def graph_hparams(graph: CrystalGraphConfig) -> dict[str, Any]:
        """ALIGNN builds its own graphs from the positions: within ``data.graph``'s radius and
        neighbour count, unless ``model.params`` sets ``cutoff`` / ``max_neighbors``."""
        return {"cutoff": graph.radius, "max_neighbors": graph.max_neighbors}

    def embed_nodes(self, batch: Batch) -> Tensor:
        """Atom features after the last layer, shape (n_atoms, hidden_features)."""
        from alignn.torch_graph_builder import batch_torch_graph_pairs, build_pure_torch_graph

        device = self.alignn.fc.weight.device
        g, lg = batch_torch_graph_pairs(self.graph_cache.graphs(
            batch, lambda z, pos, cell: build_pure_torch_graph(atoms=to_jarvis(z, pos, cell), **self.graph_args)))
        g, lg = g.to(device), lg.to(device)
        net = self.alignn
        x = net.atom_embedding(g.ndata["atom_features"])
        y = net.edge_embedding(torch.linalg.vector_norm(g.edata["r"], dim=1))
        z = net.angle_embedding(lg.edata["h"])
        for layer in net.alignn_layers:
            x, y, z = layer(g, lg, x, y, z)
        for layer in net.gcn_layers:
            x, y = layer(g, x, y)
        return x
