import pytest
import torch
from torch_geometric.data import Batch, Data

from tasksim_ray.featurize.graphstore import (
    batch_from_bytes,
    graph_from_bytes,
    graph_to_bytes,
    pack_graphs,
    unpack_graphs,
)
from tasksim_ray.featurize.molecule import smiles_to_graph


def _crystal(n: int, e: int, seed: int) -> Data:
    """A graph with every crystal field: per-atom z and pos, a per-crystal cell."""
    g = torch.Generator().manual_seed(seed)
    return Data(x=torch.rand(n, 92, generator=g), edge_index=torch.randint(0, n, (2, e), generator=g),
                edge_attr=torch.rand(e, 41, generator=g), z=torch.randint(1, 90, (n,), generator=g),
                pos=torch.rand(n, 3, generator=g), cell=torch.rand(1, 3, 3, generator=g))


def _same(g: Data, h: Data) -> None:
    assert sorted(k for k in g.keys() if k != "num_nodes") == sorted(k for k in h.keys() if k != "num_nodes")
    for k in g.keys():
        if k != "num_nodes":
            assert torch.equal(g[k], h[k]) and g[k].dtype == h[k].dtype, k
    assert g.num_nodes == h.num_nodes


@pytest.mark.parametrize("graphs", [
    [smiles_to_graph(s) for s in ["C", "CCO", "c1ccccc1O"]],   # molecules, one with no bonds
    [_crystal(1, 12, 0), _crystal(5, 60, 1)],                  # crystals: z, pos and a cell each
])
def test_bytes_and_store_round_trip(graphs: list[Data]) -> None:
    for g in graphs:
        _same(g, graph_from_bytes(graph_to_bytes(g)))
    unpacked = unpack_graphs(pack_graphs(graphs))
    assert len(unpacked) == len(graphs)
    for g, h in zip(graphs, unpacked):
        _same(g, h)


@pytest.mark.parametrize("graphs", [
    [smiles_to_graph(s) for s in ["C", "CCO", "c1ccccc1O", "[Na+].[Cl-]"]],
    [_crystal(1, 12, 0), _crystal(5, 60, 1), _crystal(3, 0, 2)],
])
def test_batch_from_bytes_equals_pyg_collation(graphs: list[Data]) -> None:
    """The hosts' one-pass decoder gives the tensors PyG's collation gives, so embeddings are the same bytes."""
    ref = Batch.from_data_list([graph_from_bytes(graph_to_bytes(g)) for g in graphs])
    got = batch_from_bytes([graph_to_bytes(g) for g in graphs])
    assert got.num_graphs == ref.num_graphs == len(graphs) and got.num_nodes == ref.num_nodes
    assert sorted(got.keys()) == sorted(ref.keys())
    for k in ref.keys():
        if k != "num_nodes":
            assert torch.equal(got[k], ref[k]) and got[k].dtype == ref[k].dtype, k


def test_crystal_batch_stacks_cells() -> None:
    batch = Batch.from_data_list(unpack_graphs(pack_graphs([_crystal(2, 4, 0), _crystal(3, 6, 1)])))
    assert batch.cell.shape == (2, 3, 3) and batch.pos.shape == (5, 3) and batch.z.shape == (5,)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValueError, match="no packing rule"):
        graph_to_bytes(Data(x=torch.zeros(1, 2), edge_index=torch.zeros(2, 0, dtype=torch.long), extra=torch.ones(1)))
