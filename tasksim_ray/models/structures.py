"""What the crystal adapters (CHGNet, MACE, ALIGNN) share: turning a crystal batch back into the
structure objects each library reads, and the head / layer plumbing around their encoders.

A crystal batch is a PyG ``Batch`` of ``Data`` with ``z`` (atomic numbers), ``pos`` (Cartesian A)
and ``cell`` ((B, 3, 3), rows = lattice vectors). Each foundation library builds its own periodic
neighbour graph from a structure, so the adapters split the batch per crystal and hand each
library the object its graph builder expects: CHGNet a pymatgen ``Structure``, MACE an ASE
``Atoms``, ALIGNN a jarvis ``Atoms``; ``GraphCache`` keeps the built graphs, so a crystal seen in
an earlier epoch costs no neighbour search. The conversion leaves the autograd graph (embeddings are
differentiable in the weights, not in the positions), which fine-tuning does not need.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np
from ase import Atoms as AseAtoms
from pymatgen.core import Lattice, Structure
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.models.heads import mlp_head

Crystal = tuple[np.ndarray, np.ndarray, np.ndarray]


def crystal_arrays(batch: Batch) -> list[Crystal]:
    """(atomic numbers, Cartesian positions, 3x3 lattice) of each crystal in the batch."""
    z = batch.z.detach().cpu().numpy()
    pos = batch.pos.detach().cpu().double().numpy()
    cells = batch.cell.detach().cpu().double().numpy().reshape(-1, 3, 3)
    ptr = batch.ptr.cpu().tolist()
    return [(z[a:b], pos[a:b], cells[i]) for i, (a, b) in enumerate(pairwise(ptr))]


def to_structure(z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> Structure:
    return Structure(Lattice(cell), z.tolist(), pos, coords_are_cartesian=True)


def to_ase(z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> AseAtoms:
    return AseAtoms(numbers=z, positions=pos, cell=cell, pbc=True)


def to_jarvis(z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> Any:
    """A jarvis ``Atoms`` (imported here: only the ALIGNN adapter needs jarvis-tools)."""
    from ase.data import chemical_symbols
    from jarvis.core.atoms import Atoms as JarvisAtoms

    return JarvisAtoms(lattice_mat=cell, coords=pos, elements=[chemical_symbols[int(n)] for n in z], cartesian=True)


class GraphCache:
    """Each crystal's library graph, built once: a bounded LRU keyed by the crystal's (z, pos, cell)
    bytes, so training epochs after the first skip the neighbour search (a crystal whose positions
    change is a new key). Graphs stay on the CPU. A pickled or copied model (a Ray task's argument,
    a best-epoch snapshot) starts with an empty cache: the graphs are derived data."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._graphs: OrderedDict[bytes, Any] = OrderedDict()

    def graphs(self, batch: Batch, build: Callable[[np.ndarray, np.ndarray, np.ndarray], Any]) -> list[Any]:
        """``build(z, pos, cell)`` of each crystal in the batch, from the cache where it is there."""
        out = []
        for z, pos, cell in crystal_arrays(batch):
            key = z.tobytes() + pos.tobytes() + cell.tobytes()
            graph = self._graphs.pop(key, None)
            if graph is None:
                graph = build(z, pos, cell)
            if self.max_size > 0:
                self._graphs[key] = graph
                if len(self._graphs) > self.max_size:
                    self._graphs.popitem(last=False)
            out.append(graph)
        return out

    def __len__(self) -> int:
        return len(self._graphs)

    def __getstate__(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "_graphs": OrderedDict()}


class CrystalBackbone(nn.Module):
    """The backbone interface around a crystal encoder: ``embed`` pools the per-atom features of
    ``embed_nodes`` (``graph``) or runs them through the head's hidden layers (``ffn``), as the
    D-MPNN does, so the embedding and transfer stages treat every backbone alike.

    Subclasses build their encoder, set ``ENCODER_LAYERS`` and ``embedding_dim``, then call
    ``_init_head``; they override ``embed_graph`` when the library has its own crystal readout, and
    build their library's graphs through ``graph_cache`` (``graph_cache`` crystals; 0: no cache)."""

    LAYERS = ("graph", "ffn")
    ENCODER_LAYERS: tuple[str, ...] = ()
    embedding_dim: int

    def __init__(self, pooling: str, dropout: float, ffn_hidden_dim: int, ffn_layers: int,
                 graph_cache: int = 2048) -> None:
        super().__init__()
        if pooling not in ("mean", "sum"):
            raise ValueError(f"pooling must be 'mean' or 'sum', not '{pooling}'")
        self.pooling = pooling
        self.graph_cache = GraphCache(graph_cache)
        self._ffn_shape = (ffn_hidden_dim, ffn_layers, dropout)

    def _init_head(self, n_outputs: int) -> None:
        hidden, n_layers, dropout = self._ffn_shape
        self.ffn = mlp_head(self.embedding_dim, hidden, n_layers, dropout, n_outputs)

    @property
    def head(self) -> nn.Module:
        return self.ffn

    def reset_head(self, n_outputs: int = 1) -> None:
        """A freshly initialised head for a new target (fine-tuning keeps only the encoder)."""
        device = next(self.parameters()).device
        self._init_head(n_outputs)
        self.ffn.to(device)

    def embed_nodes(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def embed_graph(self, batch: Batch) -> Tensor:
        """One vector per crystal: the per-atom features pooled (``pooling``: mean or sum)."""
        nodes = self.embed_nodes(batch)
        return scatter(nodes, batch.batch, dim=0, dim_size=batch.num_graphs, reduce=self.pooling)

    def embed(self, batch: Batch, layer: str = "graph") -> Tensor:
        """Graph-level features (n_crystals, dim): ``graph`` (embedding_dim) or ``ffn``, the head's
        last hidden layer."""
        if layer not in self.LAYERS:
            raise ValueError(f"unknown layer '{layer}'; layers: {self.LAYERS}")
        pooled = self.embed_graph(batch)
        return self.ffn[:-1](pooled) if layer == "ffn" else pooled

    def forward(self, batch: Batch) -> Tensor:
        return self.ffn(self.embed(batch))


def with_parameters(model: nn.Module, prefixes: list[str]) -> tuple[str, ...]:
    """The module paths among ``prefixes`` that own parameters: a layer group of buffers only (a
    fixed radial basis, say) would be an empty group in the fine-tuning strategies."""
    modules = dict(model.named_modules())
    return tuple(p for p in prefixes if next(modules[p].parameters(), None) is not None)
