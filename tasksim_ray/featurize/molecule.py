"""RDKit molecule -> PyG graph with Chemprop-style (v2 default) atom and bond features.

Each bond becomes two directed edges stored next to each other (edge 2i is u->v, 2i+1 is v->u),
so the reverse of edge e is ``e ^ 1`` in any PyG batch, which the D-MPNN needs to exclude the
reverse message. Hydrogens stay implicit, as in Chemprop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from rdkit import Chem, RDLogger
from torch_geometric.data import Data

RDLogger.DisableLog("rdApp.*")  # invalid SMILES are reported by us, once, not per molecule

_HYB = Chem.rdchem.HybridizationType
_ATOM_CHOICES: list[list] = [
    list(range(1, 37)) + [53],                      # atomic number (H..Kr, I)
    [0, 1, 2, 3, 4, 5],                             # degree
    [-1, -2, 1, 2, 0],                              # formal charge
    [0, 1, 2, 3],                                   # chiral tag
    [0, 1, 2, 3, 4],                                # total number of Hs
    [_HYB.S, _HYB.SP, _HYB.SP2, _HYB.SP2D, _HYB.SP3, _HYB.SP3D, _HYB.SP3D2],
]
_BOND_TYPES = [Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC]
_N_STEREO = 6

# each one-hot has a trailing "other" slot; plus aromatic bit and scaled mass
ATOM_FDIM = sum(len(c) + 1 for c in _ATOM_CHOICES) + 2
BOND_FDIM = 1 + len(_BOND_TYPES) + 2 + (_N_STEREO + 1)  # null-bond bit, type, conj, ring, stereo


def _one_hot(value: object, choices: list) -> list[float]:
    vec = [0.0] * (len(choices) + 1)
    vec[choices.index(value) if value in choices else -1] = 1.0
    return vec


def atom_features(atom: Chem.Atom) -> list[float]:
    values = [atom.GetAtomicNum(), atom.GetTotalDegree(), atom.GetFormalCharge(),
              int(atom.GetChiralTag()), atom.GetTotalNumHs(), atom.GetHybridization()]
    feats: list[float] = []
    for v, choices in zip(values, _ATOM_CHOICES):
        feats += _one_hot(v, choices)
    return feats + [float(atom.GetIsAromatic()), 0.01 * atom.GetMass()]


def bond_features(bond: Chem.Bond) -> list[float]:
    bt = bond.GetBondType()
    feats = [0.0] + [float(bt == t) for t in _BOND_TYPES]
    feats += [float(bond.GetIsConjugated()), float(bond.IsInRing())]
    return feats + _one_hot(int(bond.GetStereo()), list(range(_N_STEREO)))


def mol_to_graph(mol: Chem.Mol) -> Data:
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32)
    src: list[int] = []
    dst: list[int] = []
    attrs: list[list[float]] = []
    for bond in mol.GetBonds():
        u, v = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        f = bond_features(bond)
        src += [u, v]
        dst += [v, u]
        attrs += [f, f]
    edge_index = torch.tensor([src, dst], dtype=torch.long).reshape(2, -1)
    edge_attr = torch.tensor(attrs, dtype=torch.float32).reshape(-1, BOND_FDIM)
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr)


def smiles_to_graph(smiles: str) -> Data | None:
    """Graph of one SMILES, or None when RDKit cannot parse it or it has no atoms."""
    mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles.strip() else None
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol_to_graph(mol)


@dataclass
class FeaturizeReport:
    n_total: int
    invalid_rows: list[int] = field(default_factory=list)
    invalid_examples: list[str] = field(default_factory=list)
    noun: str = "SMILES"

    def summary(self, where: str) -> str:
        if not self.invalid_rows:
            return f"{where}: all {self.n_total} {self.noun} featurised"
        return (f"{where}: skipped {len(self.invalid_rows)} of {self.n_total} invalid SMILES, "
                f"e.g. {self.invalid_examples}")


def featurize_many(smiles: Sequence[str], n_examples: int = 3) -> tuple[list[Data | None], FeaturizeReport]:
    graphs = [smiles_to_graph(s) for s in smiles]
    report = FeaturizeReport(len(graphs))
    for i, g in enumerate(graphs):
        if g is None:
            report.invalid_rows.append(i)
            if len(report.invalid_examples) < n_examples:
                report.invalid_examples.append(str(smiles[i]))
    return graphs, report
