"""Inputs to graphs: molecules (RDKit), crystals (pymatgen neighbour lists), by input kind, and the
packed graph store that carries graphs between processes."""
