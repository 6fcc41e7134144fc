"""MACE (Batatia et al. 2022) as a crystal backbone, built from JSON hyperparameters, optionally
starting from foundation weights in a user-given file.

Graphs come from MACE's own data utilities: ASE ``Atoms`` with ``pbc=True`` and the cell, whose
neighbour list within ``r_max`` carries the periodic image shifts MACE adds to the edge vectors.
Per-atom features are the invariant (0e) channels of every interaction's ``node_feats``,
concatenated (the equivariant l>0 channels rotate with the crystal, so they are no descriptor);
the crystal vector pools them. MACE's energy readouts are not used: the head reads the features.
A foundation file that is a ScaleShiftMACE (the class of the MACE-MP models: MACE plus atomic
energies and an energy scale/shift, which leave ``node_feats`` as they are) brings its own
architecture, so a config names only the file.
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


def read_foundation(path: str, trust_pickle: bool = False) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """The MACE state dict in ``path`` and, when the file carries one, its ScaleShiftMACE
    architecture (plain values, see ``plain_config``). A file is one of: a ``mace.modules.MACE``
    state dict or a tasksim MACE checkpoint's ``state_dict.pt`` (its ``mace.*`` entries), whose
    architecture the hyperparameters give; ``{"config", "state_dict"}`` as ``save_foundation``
    writes it; or a whole pickled MACE / ScaleShiftMACE module (MACE's own ``.model`` files, the
    MACE-MP foundation models among them).

    Files are untrusted, so they are read with ``weights_only=True`` (tensors and plain containers,
    no code). A pickled module can only be read by unpickling, which runs whatever code the file
    names: ``trust_pickle=True`` allows that, for files you made or whose source you trust."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path} is not a plain state dict (a pickled MACE model?); set "
                         "trust_pickle: true to unpickle it, only if you trust where it came from") from e
    config = None
    if isinstance(obj, nn.Module):
        config = plain_config(obj) if type(obj).__name__ == "ScaleShiftMACE" else None
        state = obj.state_dict()
    elif isinstance(obj, dict) and {"config", "state_dict"} <= obj.keys():
        config, state = obj["config"], obj["state_dict"]
    else:
        state = obj
    if not isinstance(state, dict) or (config is not None and not isinstance(config, dict)):
        raise ValueError(f"{path} holds no MACE state dict")
    if any(k.startswith("mace.") for k in state):
        state = {k.removeprefix("mace."): v for k, v in state.items() if k.startswith("mace.")}
    return state, config


# how plain_config names what a ScaleShiftMACE is built from: classes and the gate by name, irreps
# as strings, arrays as lists (so a weights-only file and a model folder's config.json can hold it)
_CLASS_ARGS = ("interaction_cls", "interaction_cls_first", "readout_cls")
_IRREPS_ARGS = ("hidden_irreps", "MLP_irreps", "edge_irreps")
_ARRAY_ARGS = ("atomic_energies", "atomic_inter_scale", "atomic_inter_shift")
_GATES = ("silu", "tanh", "relu", "gelu", "sigmoid", "softplus")


def plain_config(model: nn.Module) -> dict[str, Any]:
    """A ScaleShiftMACE's constructor arguments as plain values, read by mace's own
    ``extract_config_mace_model``."""
    from mace.tools.scripts_utils import extract_config_mace_model

    config = extract_config_mace_model(model)
    if "error" in config:
        raise ValueError(config["error"])
    if config.get("cueq_config") is not None:
        raise ValueError("a cuequivariance MACE model; convert it back to e3nn first (mace's cueq_to_e3nn)")
    plain: dict[str, Any] = {}
    for key, value in config.items():
        if key in _CLASS_ARGS or key == "gate":
            value = None if value is None else value.__name__
        elif key in _IRREPS_ARGS:
            value = None if value is None else str(value)
        elif isinstance(value, (np.ndarray, Tensor)):
            value = value.tolist()
        elif isinstance(value, (list, tuple)):
            value = [v.item() if isinstance(v, (np.generic, Tensor)) else v for v in value]
        plain[key] = value
    return plain


def _constructor_args(plain: dict[str, Any]) -> dict[str, Any]:
    """``plain_config``'s output back to ScaleShiftMACE arguments; names resolve only to mace's
    interaction and readout classes and a few activations, so a config can name no other code."""
    modules = _import_mace()
    from e3nn import o3
    from mace.modules import blocks

    args = dict(plain)
    for key in _CLASS_ARGS:
        name = args.get(key)
        if name is None:
            continue
        cls = modules.interaction_classes.get(name) if key != "readout_cls" else (
            getattr(blocks, name, None) if name.endswith("ReadoutBlock") else None)
        if cls is None:
            raise ValueError(f"architecture.{key}: unknown MACE class '{name}'")
        args[key] = cls
    for key in _IRREPS_ARGS:
        if args.get(key) is not None:
            args[key] = o3.Irreps(args[key])
    for key in _ARRAY_ARGS:
        if key in args:
            args[key] = np.asarray(args[key], dtype=float)
    gate = args.get("gate")
    if gate is not None and gate not in _GATES:
        raise ValueError(f"architecture.gate: '{gate}' is not one of {list(_GATES)}")
    args["gate"] = getattr(nn.functional, gate) if gate else None
    return args


def save_foundation(model: nn.Module, path: str) -> None:
    """Write a ScaleShiftMACE (e.g. a MACE-MP model unpickled once from a trusted ``.model``) as a
    file that ``read_foundation`` loads without unpickling: its plain config and state dict."""
    torch.save({"config": plain_config(model), "state_dict": model.state_dict()}, path)


class MACEBackbone(CrystalBackbone):
    """Defaults are small enough to train on a CPU. ``atomic_numbers`` is the element table
    (default H..Pu); ``avg_num_neighbors`` normalises messages, so set it from your data
    (``mace.modules.compute_avg_num_neighbors``). ``foundation_file`` loads starting weights (see
    ``read_foundation``): a file that carries its ScaleShiftMACE architecture (a MACE-MP model)
    builds that architecture, and the architecture hyperparameters here are ignored; a bare state
    dict must match them. ``architecture`` is such a file's ``plain_config``: the backbone records
    it (``hparams_from_file``) so a saved model folder rebuilds without the file."""

    def __init__(self, r_max: float = 5.0, num_bessel: int = 8, num_polynomial_cutoff: int = 5,
                 max_ell: int = 2, num_interactions: int = 2, num_channels: int = 32, max_L: int = 1,
                 correlation: int = 2, radial_mlp: list[int] | None = None, mlp_irreps: str = "16x0e",
                 avg_num_neighbors: float = 20.0, atomic_numbers: list[int] | None = None,
                 interaction: str = "RealAgnosticResidualInteractionBlock",
                 foundation_file: str | None = None, trust_pickle: bool = False,
                 architecture: dict[str, Any] | None = None,
                 pooling: str = "mean", dropout: float = 0.0, ffn_hidden_dim: int = 128,
                 ffn_layers: int = 2, n_tasks: int = 1, graph_cache: int = 2048) -> None:
        modules = _import_mace()
        from e3nn import o3
        from mace.tools import AtomicNumberTable

        super().__init__(pooling, dropout, ffn_hidden_dim, ffn_layers, graph_cache)
        state, from_file = read_foundation(foundation_file, trust_pickle) if foundation_file else (None, None)
        architecture = from_file or architecture
        self.hparams_from_file = {"architecture": architecture} if architecture else {}
        if architecture:
            self.mace = modules.ScaleShiftMACE(**_constructor_args(architecture))
            zs, r_max = [int(z) for z in architecture["atomic_numbers"]], float(architecture["r_max"])
        else:
            zs = sorted(atomic_numbers or range(1, 95))
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
        if state is not None:
            self.mace.load_state_dict(state)
        self.z_table, self.r_max = AtomicNumberTable(zs), r_max
        self.register_buffer("invariant", self._invariant_index(), persistent=False)
        layers = ["mace.node_embedding", "mace.radial_embedding"]
        layers += [f"mace.{kind}.{i}" for i in range(len(self.mace.interactions))
                   for kind in ("interactions", "products")]
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
        data = self.graph_cache.graphs(batch, lambda z, pos, cell: AtomicData.from_config(
            config_from_atoms(to_ase(z, pos, cell)), z_table=self.z_table, cutoff=self.r_max))
        return torch_geometric.Batch.from_data_list(data).to(self.invariant.device).to_dict()

    def embed_nodes(self, batch: Batch) -> Tensor:
        """Invariant features of every interaction, shape (n_atoms, num_interactions * num_channels)."""
        out = self.mace(self._graphs(batch), training=self.training, compute_force=False)
        return out["node_feats"][:, self.invariant]
