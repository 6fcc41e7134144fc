"""Crystal graphs against cells whose neighbour shells are counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.crystal import (
    GraphSettings,
    atom_features,
    graphs_from_structures,
    neighbor_edges,
    structure_to_graph,
)


def simple_cubic(a: float = 3.0, element: str = "Na") -> Structure:
    return Structure(Lattice.cubic(a), [element], [[0, 0, 0]])


def test_simple_cubic_shells_counted_by_hand() -> None:
    # lattice vectors n (n != 0) with |n| a <= 8, a = 3: |n|^2 <= 7.1; shells |n|^2 = 1, 2, 3, 4, 5, 6
    # hold 6, 12, 8, 6, 24, 24 points (7 is not a sum of three squares): 80 neighbours
    s = simple_cubic()
    all_edges = neighbor_edges(s, GraphSettings(max_neighbors=1000, pad_missing=False))
    assert len(all_edges.distance) == 6 + 12 + 8 + 6 + 24 + 24

    edges = neighbor_edges(s, GraphSettings())
    assert len(edges.distance) == 12
    assert (edges.centre == 0).all() and (edges.neighbor == 0).all()
    np.testing.assert_allclose(edges.distance[:6], 3.0)
    np.testing.assert_allclose(edges.distance[6:], 3.0 * math.sqrt(2))
    assert {tuple(v) for v in edges.image[:6]} == {(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)}
    assert all(int(np.abs(v).sum()) == 2 and int(np.abs(v).max()) == 1 for v in edges.image[6:])


def test_graph_tensors_follow_the_contract() -> None:
    g = structure_to_graph(simple_cubic())
    assert g.x.shape == (1, 92) and g.x.dtype == torch.float32
    np.testing.assert_array_equal(g.x[0].numpy(), atom_features()[11])
    assert g.edge_index.shape == (2, 12) and g.edge_index.dtype == torch.long
    assert g.edge_attr.shape == (12, 41) and g.edge_attr.dtype == torch.float32
    # d = 3.0 sits on centre 15 (mu = 3.0); its neighbours mu = 2.8, 3.2 get exp(-0.2^2 / 0.2^2) = e^-1
    np.testing.assert_allclose(g.edge_attr[0, 15].item(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(g.edge_attr[0, [14, 16]].numpy(), math.exp(-1), rtol=1e-6)
    assert g.z.tolist() == [11] and g.z.dtype == torch.long
    assert g.pos.shape == (1, 3) and g.cell.shape == (1, 3, 3)
    np.testing.assert_allclose(g.cell[0].numpy(), 3.0 * np.eye(3))


def test_two_atom_cell_neighbours_by_hand() -> None:
    # CsCl type, a = 3: 8 unlike neighbours at a*sqrt(3)/2 = 2.598, then 6 like ones at a = 3.0
    s = Structure(Lattice.cubic(3.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    edges = neighbor_edges(s, GraphSettings())
    g = structure_to_graph(s)
    for centre, other in ((0, 1), (1, 0)):
        sel = edges.centre == centre
        assert sel.sum() == 12
        np.testing.assert_allclose(edges.distance[sel][:8], 1.5 * math.sqrt(3))
        np.testing.assert_allclose(edges.distance[sel][8:], 3.0)
        assert (edges.neighbor[sel][:8] == other).all() and (edges.neighbor[sel][8:] == centre).all()
    assert g.edge_index[1].tolist() == [0] * 12 + [1] * 12  # grouped by centre, in atom order
    assert g.edge_index[0, :8].tolist() == [1] * 8
    np.testing.assert_allclose(g.pos.numpy(), [[0, 0, 0], [1.5, 1.5, 1.5]])
    assert [h.num_nodes for h in graphs_from_structures([s, simple_cubic()])] == [2, 1]


def test_missing_neighbours_padded_like_the_original_pipeline() -> None:
    # radius 3.5 around simple cubic a = 3 holds only the 6 face neighbours
    s = simple_cubic()
    padded = neighbor_edges(s, GraphSettings(radius=3.5))
    assert len(padded.distance) == 12
    np.testing.assert_allclose(padded.distance[6:], 4.5)  # radius + 1, neighbour index 0
    assert (padded.neighbor[6:] == 0).all()
    real = neighbor_edges(s, GraphSettings(radius=3.5, pad_missing=False))
    assert len(real.distance) == 6


@pytest.mark.parametrize(("structure", "message"), [
    (simple_cubic(element="Og"), "element Og"),
    (simple_cubic(a=20.0), "no neighbour within 8.0"),
    (Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.01, 0, 0]]), "overlap"),
])
def test_bad_structures_name_the_row(structure: Structure, message: str) -> None:
    ok = simple_cubic()
    with pytest.raises(TasksimError, match=rf"row 1 of data.json.gz: .*{message}"):
        graphs_from_structures([ok, structure], where="data.json.gz")
