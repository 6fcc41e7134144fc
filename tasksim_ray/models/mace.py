"""MACE (Batatia et al. 2022) as a crystal backbone, built from JSON hyperparameters, optionally
starting from foundation weights in a user-given file.

Graphs come from MACE's own data utilities: ASE ``Atoms`` with ``pbc=True`` and the cell, whose
neighbour list within ``r_max`` carries the periodic image shifts MACE adds to the edge vectors.
Per-atom features are the invariant (0e) channels of every interaction's ``node_feats``,
concatenated (the equivariant l>0 channels rotate with the crystal, so they are no descriptor);
the crystal vector pools them. MACE's energy readouts are not used: the head reads the features.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from tasksim_ray.models.structures import CrystalBackbone, to_ase, with_parameters

# importing mace sets this for the whole process, which would turn every later torch.load that
# does not pass weights_only into an unpickling one; it is needed only while e3nn loads constants
_UNSAFE_LOAD = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _import_mace() -> Any:
    """``mace.modules`` with the process environment restored after the import."""
    before = os.environ.get(_UNSAFE_LOAD)
    try:
        import mace.modules
    finally:
        if before is None:
            os.environ.pop(_UNSAFE_LOAD, None)
        else:
            os.environ[_UNSAFE_LOAD] = before
    return mace.modules


def foundation_state(path: str, trust_pickle: bool = False) -> dict[str, Tensor]:
    """A MACE state dict from ``path``: a ``mace.modules.MACE`` state dict, or a tasksim MACE
    checkpoint's ``state_dict.pt`` (its ``mace.*`` entries).

    Files are untrusted, so they are read with ``weights_only=True`` (tensors and plain containers,
    no code). MACE's own ``.model`` files are whole pickled modules and can only be read by
    unpickling, which runs whatever code the file names: ``trust_pickle=True`` allows that, for
    files you made or whose source you trust."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is not a plain state dict (a pickled MACE model?); set "
                         "trust_pickle: true to unpickle it, only if you trust where it came from") from e
    state = obj.state_dict() if isinstance(obj, nn.Module) else obj
    if any(k.startswith("mace.") for k in state):
        state = {k.removeprefix("mace."): v for k, v in state.items() if k.startswith("mace.")}
    return state


class MACEBackbone(CrystalBackbone):
    """Defaults are small enough to train on a CPU. ``atomic_numbers`` is the element table
    (default H..Pu); ``avg_num_neighbors`` normalises messages, so set it from your data
    (``mace.modules.compute_avg_num_neighbors``). ``foundation_file`` loads starting weights whose
    architecture matches these hyperparameters (see ``foundation_state``); a saved checkpoint
    rebuilt from its config reads that file again before its own weights replace it."""

    def __init__(self, r_max: float = 5.0, num_bessel: int = 8, num_polynomial_cutoff: int = 5,
                 max_ell: int = 2, num_interactions: int = 2, num_channels: int = 32, max_L: int = 1,
                 correlation: int = 2, radial_mlp: list[int] | None = None, mlp_irreps: str = "16x0e",
                 avg_num_neighbors: float = 20.0, atomic_numbers: list[int] | None = None,
                 interaction: str = "RealAgnosticResidualInteractionBlock",
                 foundation_file: str | None = None, trust_pickle: bool = False,
                 pooling: str = "mean", dropout: float = 0.0, ffn_hidden_dim: int = 128,
                 ffn_layers: int = 2, n_tasks: int = 1) -> None:
        modules = _import_mace()
        from e3nn import o3
        from mace.tools import AtomicNumberTable

        super().__init__(pooling, dropout, ffn_hidden_dim, ffn_layers)
        foundation = foundation_state(foundation_file, trust_pickle) if foundation_file else None
        zs = sorted(atomic_numbers or range(1, 95))
        self.z_table, self.r_max = AtomicNumberTable(zs), r_max
        hidden = o3.Irreps("+".join(f"{num_channels}x{ell}{'e' if ell % 2 == 0 else 'o'}"
                                    for ell in range(max_L + 1)))
        block = modules.interaction_classes[interaction]
        self.mace = modules.MACE(
            r_max=r_max, num_bessel=num_bessel, num_polynomial_cutoff=num_polynomial_cutoff,
            max_ell=max_ell, interaction_cls=block, interaction_cls_first=block,
            num_interactions=num_interactions, num_elements=len(zs), hidden_irreps=hidden,
            MLP_irreps=o3.Irreps(mlp_irreps), atomic_energies=np.zeros(len(zs)),
            avg_num_neighbors=avg_num_neighbors, atomic_numbers=zs, correlation=correlation,
            gate=nn.functional.silu, radial_MLP=radial_mlp or [32, 32, 32])
        if foundation is not None:
            self.mace.load_state_dict(foundation)
        self.register_buffer("invariant", self._invariant_index(), persistent=False)
        layers = ["mace.node_embedding", "mace.radial_embedding"]
        layers += [f"mace.{kind}.{i}" for i in range(num_interactions) for kind in ("interactions", "products")]
        self.ENCODER_LAYERS = with_parameters(self, layers)
        self.embedding_dim = len(self.invariant)
        self._init_head(n_tasks)

    def _invariant_index(self) -> Tensor:
        """Positions of the 0e channels in MACE's concatenated per-interaction ``node_feats``."""
        index, offset = [], 0
        for product in self.mace.products:
            for mul, ir in product.linear.irreps_out:
                if ir.l == 0 and ir.p == 1:
                    index.extend(range(offset, offset + mul))
                offset += mul * ir.dim
        return torch.tensor(index, dtype=torch.long)

    def _graphs(self, batch: Batch) -> dict[str, Tensor]:
        from mace.data import AtomicData, config_from_atoms
        from mace.tools import torch_geometric

        unknown = set(batch.z.tolist()) - set(self.z_table.zs)
        if unknown:
            raise ValueError(f"atomic numbers {sorted(unknown)} are not in this MACE's atomic_numbers")
        data = [AtomicData.from_config(config_from_atoms(a), z_table=self.z_table, cutoff=self.r_max)
                for a in to_ase(batch)]
        return torch_geometric.Batch.from_data_list(data).to(self.invariant.device).to_dict()

    def embed_nodes(self, batch: Batch) -> Tensor:
        """Invariant features of every interaction, shape (n_atoms, num_interactions * num_channels)."""
        out = self.mace(self._graphs(batch), training=self.training, compute_force=False)
        return out["node_feats"][:, self.invariant]
