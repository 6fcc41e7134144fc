"""SevenNet-0 (Park et al. 2024) as a crystal backbone: a NequIP-family E(3)-equivariant potential
trained on MPtrj, the data MACE-MP-0 was trained on, whose weights ship inside the ``sevenn`` wheel.

The checkpoint is read with torch's weights-only loader (no code runs from the file); besides
tensors it holds plain config values, numpy arrays (the per-species energy shift and scale) and a
``slice``, which are allow-listed as data constructors. The model is built by sevenn's own
``build_E3_equivariant_model`` from that config (sevenn 0.10.0; it runs with the e3nn 0.4.4 that
mace-torch pins). The encoder is every module before the energy readout: the one-hot species
embedding, then 5 interaction blocks (self-connection, convolution, gate); its output is 128
invariant channels per atom, which ``embed_graph`` pools per crystal. Graphs are sevenn's: every
periodic neighbour within the 5 A cutoff with its edge vector (ASE's neighbour list), built once
per crystal (``graph_cache``). The energy readout is not used: the head reads the features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from tasksim_ray.models.structures import CrystalBackbone, with_parameters

# the encoder stops before these (sevenn's energy readout and its force/stress output)
_READOUT = ("reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy", "reduce_total_enegy",
            "force_output", "readout_FCN")


def _safe_globals() -> list[Any]:
    """What a SevenNet checkpoint holds beside tensors: numpy arrays and dtypes, and a slice (data only)."""
    from numpy._core.multiarray import _reconstruct

    return [slice, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            np.dtypes.Float32DType, np.dtypes.Float64DType, np.dtypes.Int64DType]


def shipped_checkpoint(model_name: str = "SevenNet_0__11July2024") -> dict[str, Any]:
    """The checkpoint shipped in the installed ``sevenn`` package, read weights-only."""
    import sevenn

    folder = Path(sevenn.__file__).parent / "pretrained_potentials" / model_name
    files = sorted(folder.glob("*.pth"))
    if not files:
        raise ValueError(f"sevenn ships no pretrained model '{model_name}' (looked in {folder})")
    with torch.serialization.safe_globals(_safe_globals()):
        return torch.load(files[0], map_location="cpu", weights_only=True)


def _import_e3nn() -> None:
    """Import e3nn, whose import reads its own constants file (a ``slice`` among tensors) with torch's
    default, weights-only loader: allow ``slice`` for that read only."""
    with torch.serialization.safe_globals([slice]):
        import e3nn.o3  # noqa: F401


def build_sevenn(config: dict[str, Any]) -> torch.nn.Module:
    """sevenn's model from a checkpoint's config, with sevenn's own patches and defaults."""
    _import_e3nn()
    from sevenn import util
    from sevenn._const import model_defaults
    from sevenn.model_build import build_E3_equivariant_model

    config = util._patch_old_config(dict(config))
    config = {**model_defaults(config), **config}
    return build_E3_equivariant_model(config)


def sevenn_graph(z: np.ndarray, pos: np.ndarray, cell: np.ndarray, cutoff: float) -> dict[str, Tensor]:
    """sevenn's input graph of one crystal: edges to every periodic neighbour within ``cutoff``."""
    from ase.neighborlist import primitive_neighbor_list

    src, dst, vec = primitive_neighbor_list("ijD", [True] * 3, cell, pos, cutoff, self_interaction=False)
    edges = torch.as_tensor(np.stack([src, dst]), dtype=torch.long)
    return {"z": torch.as_tensor(z, dtype=torch.long), "edge_index": edges,
            "edge_vec": torch.as_tensor(vec, dtype=torch.float32)}


class SevenNetBackbone(CrystalBackbone):
    """``pretrained``: SevenNet-0's shipped weights (else the same architecture, freshly initialised);
    ``freeze``: encoder weights start with ``requires_grad=False`` (fine-tuning strategies reopen them)."""

    def __init__(self, model_name: str = "SevenNet_0__11July2024", pretrained: bool = True, freeze: bool = True,
                 pooling: str = "mean", dropout: float = 0.0, ffn_hidden_dim: int = 128, ffn_layers: int = 2,
                 n_tasks: int = 1, graph_cache: int = 2048) -> None:
        _import_e3nn()
        from sevenn import _keys as KEY

        super().__init__(pooling, dropout, ffn_hidden_dim, ffn_layers, graph_cache)
        checkpoint = shipped_checkpoint(model_name)
        model = build_sevenn(checkpoint["config"])
        state = checkpoint["model_state_dict"]
        if pretrained:
            model.load_state_dict(state)
        else:  # the convolutions' fixed message normalisers (average neighbour count) are architecture, not
            # learned (sevenn's config patch leaves them 0, i.e. division by zero, until a state dict sets them)
            model.load_state_dict({k: v for k, v in state.items() if k.endswith(".denominator")}, strict=False)
        for name in _READOUT:
            model.delete_module_by_key(name)
        for module in model.modules():  # fixed normalisers stay fixed: buffers, which no strategy trains
            if isinstance(getattr(module, "denominator", None), torch.nn.Parameter):
                value = module.denominator.detach().clone()
                del module.denominator
                module.register_buffer("denominator", value)
        self.sevenn = model
        self.cutoff = float(checkpoint["config"]["cutoff"])
        self.register_buffer("z_to_onehot", model.z_to_onehot_tensor.clone(), persistent=False)
        self._keys = KEY
        if freeze:
            self.sevenn.requires_grad_(False)
        self.ENCODER_LAYERS = with_parameters(self, [f"sevenn.{n}" for n in self.sevenn._modules])
        self.embedding_dim = int(checkpoint["config"]["channel"])
        self._init_head(n_tasks)

    def embed_nodes(self, batch: Batch) -> Tensor:
        """The last interaction block's invariant features, (n_atoms, 128)."""
        key = self._keys
        graphs = self.graph_cache.graphs(batch, lambda z, pos, cell: sevenn_graph(z, pos, cell, self.cutoff))
        counts = [len(g["z"]) for g in graphs]
        offsets = torch.tensor([0, *np.cumsum(counts)[:-1].tolist()], dtype=torch.long)
        device = self.z_to_onehot.device
        data: dict[str, Tensor] = {
            key.NODE_FEATURE: self.z_to_onehot[torch.cat([g["z"] for g in graphs]).to(device)],
            key.EDGE_IDX: torch.cat([g["edge_index"] + o for g, o in zip(graphs, offsets)], dim=1).to(device),
            key.EDGE_VEC: torch.cat([g["edge_vec"] for g in graphs]).to(device),
        }
        with torch.set_grad_enabled(torch.is_grad_enabled() and
                                    any(p.requires_grad for p in self.sevenn.parameters())):
            for module in self.sevenn:
                data = module(data)
        return data[key.NODE_FEATURE]
