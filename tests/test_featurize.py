import pytest
import torch

from tasksim_ray.featurize.molecule import ATOM_FDIM, BOND_FDIM, featurize_many, smiles_to_graph


@pytest.mark.parametrize("smiles, n_atoms, n_bonds", [
    ("C", 1, 0),                          # a single atom: no edges at all
    ("[Na+].[Cl-]", 2, 0),                # ions, disconnected
    ("c1ccccc1", 6, 6),                   # aromatic ring
    ("C[C@H](N)C(=O)[O-]", 6, 5),          # chirality and a negative charge
    ("[NH3+]CC(=O)O", 5, 4),
    ("c1ccc2[nH]ccc2c1", 9, 10),          # fused aromatic rings with an aromatic NH
])
def test_valid_smiles_graph_shapes(smiles: str, n_atoms: int, n_bonds: int) -> None:
    g = smiles_to_graph(smiles)
    assert g is not None
    assert g.x.shape == (n_atoms, ATOM_FDIM)
    assert g.edge_index.shape == (2, 2 * n_bonds)
    assert g.edge_attr.shape == (2 * n_bonds, BOND_FDIM)
    # edge 2i and 2i+1 are the two directions of one bond
    assert torch.equal(g.edge_index[:, 0::2], g.edge_index[:, 1::2].flip(0))


def test_charge_and_aromatic_features_are_set() -> None:
    pos = smiles_to_graph("[NH4+]")
    neg = smiles_to_graph("[O-]C")
    assert not torch.equal(pos.x[0], smiles_to_graph("N").x[0])
    assert not torch.equal(neg.x[0], smiles_to_graph("OC").x[0])
    benzene, hexane = smiles_to_graph("c1ccccc1"), smiles_to_graph("C1CCCCC1")
    aromatic_bit = ATOM_FDIM - 2
    assert benzene.x[:, aromatic_bit].all() and not hexane.x[:, aromatic_bit].any()
    assert benzene.edge_attr[:, 4].all()  # aromatic bond type


def test_invalid_smiles_are_reported_and_skipped() -> None:
    graphs, report = featurize_many(["CCO", "not_a_smiles", "C1CC", "", "c1ccccc1"])
    assert [g is None for g in graphs] == [False, True, True, True, False]
    assert report.invalid_rows == [1, 2, 3]
    assert report.invalid_examples == ["not_a_smiles", "C1CC", ""]
    assert "skipped 3 of 5 invalid SMILES" in report.summary("probe set")
