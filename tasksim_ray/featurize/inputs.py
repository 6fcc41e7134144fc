"""Input kinds: what a task's rows are, and how each becomes a graph.

A molecule is a SMILES string (an unparseable one is skipped and reported, as Chemprop does); a
crystal is a pymatgen ``Structure`` serialised as JSON, and a bad structure is an error naming its
row, because a crystal graph that cannot be built means the data file is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from torch_geometric.data import Data

from tasksim_ray.config import CrystalGraphConfig, DataConfig
from tasksim_ray.data.tasks import ID, TaskTable
from tasksim_ray.featurize.molecule import FeaturizeReport, featurize_many


# the most characters one atom (a SMILES atom with charge, isotope and ring bonds; a structure's site
# as JSON) takes: a longer text has more atoms than any limit derived from it, without parsing it
CHARS_PER_ATOM = {"molecule": 24, "crystal": 4000}


def atom_count(kind: str, text: str) -> int | None:
    """Atoms (sites) of one input, counted without featurising it (None if it does not parse: the
    featuriser then reports it)."""
    if kind == "molecule":
        mol = Chem.MolFromSmiles(text, sanitize=False)
        return None if mol is None else mol.GetNumAtoms()
    try:
        sites = json.loads(text).get("sites")
    except (ValueError, AttributeError):
        return None
    return len(sites) if isinstance(sites, list) else None


def too_large(kind: str, text: str, max_atoms: int) -> str | None:
    """Why one input exceeds ``max_atoms`` (None if it does not)."""
    if len(text) <= max_atoms:  # every atom takes at least one character
        return None
    if len(text) > max_atoms * CHARS_PER_ATOM[kind]:
        return f"{len(text):,} characters, more than {max_atoms} atoms can take"
    n = atom_count(kind, text)
    return f"{n:,} atoms" if n is not None and n > max_atoms else None


def featurize_inputs(kind: str, values: Sequence[str], where: str, row_ids: Sequence[str] | None = None,
                     graph: CrystalGraphConfig | None = None) -> tuple[list[Data | None], FeaturizeReport]:
    """Graphs of ``values`` (None where a molecule is invalid). ``where`` and ``row_ids`` name the
    source in errors; ``graph`` sets the crystal neighbour list and distance expansion."""
    if kind == "molecule":
        return featurize_many(list(values))
    from pymatgen.core import Structure

    from tasksim_ray.featurize.crystal import GraphSettings, graphs_from_structures

    settings = GraphSettings.from_config(graph)
    structures = [Structure.from_dict(json.loads(text)) for text in values]
    graphs: list[Data | None] = list(graphs_from_structures(structures, settings, where, row_ids))
    return graphs, FeaturizeReport(len(graphs), noun="structures")


def featurize_rows(table: TaskTable, rows: np.ndarray, data: DataConfig) -> tuple[list[Data | None], FeaturizeReport]:
    """Graphs of these table rows; errors name the data source and the row's id."""
    return featurize_inputs(table.kind, table.inputs()[rows], data.path or data.source,
                            table.frame[ID].to_numpy()[rows].tolist(), data.graph)
