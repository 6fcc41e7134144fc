"""CHGNet (Deng et al. 2023) as a crystal backbone: by default the universal pretrained model that
ships inside the ``chgnet`` package, frozen, as a foundation embedder under a new head.

CHGNet's own graph converter builds each crystal's periodic atom graph (6 A) and bond graph (3 A)
from a pymatgen ``Structure``; its forward returns the documented ``atom_fea`` (per-atom features
after the last full interaction block, the input of the final atom convolution, also what its
magnetic-moment head reads) and ``crystal_fea`` (the final atom features, layer-normed and summed
per crystal: the universal model reads energies out atom by atom). ``pooling: mean`` divides
``crystal_fea`` by the atom count, so a supercell embeds like its primitive cell; ``sum`` keeps
CHGNet's extensive crystal feature as is.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import torch
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.models.structures import CrystalBackbone, to_structure, with_parameters

# the input embeddings, in the order CHGNet applies them
_EMBEDDINGS = ("atom_embedding", "bond_basis_expansion", "bond_embedding", "bond_weights_ag",
               "bond_weights_bg", "angle_basis_expansion", "angle_embedding")


def _shipped_checkpoint(model_name: str) -> dict:
    """The pretrained checkpoint ``model_name`` ("0.3.0", "0.2.0", "r2scan") from the installed
    package, read as plain tensors (``weights_only``: no pickled code runs)."""
    import chgnet

    folder = Path(chgnet.__file__).parent / "pretrained" / model_name
    files = sorted(folder.glob("*.pth.tar"))
    if not files:
        raise ValueError(f"chgnet ships no pretrained model '{model_name}' (looked in {folder})")
    return torch.load(files[0], map_location="cpu", weights_only=True)["model"]


class CHGNetBackbone(CrystalBackbone):
    """``pretrained``: start from the shipped weights (else the same architecture, freshly
    initialised); ``freeze``: encoder weights start with ``requires_grad=False``, so plain
    training fits the head only, while fine-tuning strategies may reopen layer groups."""

    def __init__(self, model_name: str = "0.3.0", pretrained: bool = True, freeze: bool = True,
                 pooling: str = "mean", dropout: float = 0.0, ffn_hidden_dim: int = 128,
                 ffn_layers: int = 2, n_tasks: int = 1, graph_cache: int = 2048) -> None:
        from chgnet.model.model import CHGNet

        super().__init__(pooling, dropout, ffn_hidden_dim, ffn_layers, graph_cache)
        checkpoint = _shipped_checkpoint(model_name)
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            # mlp_out_bias as CHGNet.load sets it: only the 0.2.0 weights were trained with it
            self.chgnet = CHGNet(**checkpoint["model_args"], mlp_out_bias=model_name == "0.2.0",
                                 version=model_name)
        if pretrained:
            self.chgnet.load_state_dict(checkpoint["state_dict"])
        if freeze:
            self.chgnet.requires_grad_(False)
        n_conv = self.chgnet.n_conv
        # the last block's angle update feeds nothing (the final atom convolution reads atoms and
        # bonds only), so it is no layer group: no strategy could train it
        blocks = [f"{kind}.{i}" for i in range(n_conv - 1)
                  for kind in ("atom_conv_layers", "bond_conv_layers", "angle_layers")][:-1]
        self.ENCODER_LAYERS = with_parameters(
            self, [f"chgnet.{name}" for name in (*_EMBEDDINGS, *blocks, f"atom_conv_layers.{n_conv - 1}",
                                                 "readout_norm")])
        self.embedding_dim = self.chgnet.atom_fea_dim
        self._init_head(n_tasks)

    def _features(self, batch: Batch) -> dict[str, Tensor | list[Tensor]]:
        device = next(self.chgnet.parameters()).device
        graphs = [g.to(device) for g in self.graph_cache.graphs(
            batch, lambda z, pos, cell: self.chgnet.graph_converter(to_structure(z, pos, cell)))]
        # a fully frozen encoder needs no autograd graph (the default, foundation-embedder use)
        with torch.set_grad_enabled(torch.is_grad_enabled() and
                                    any(p.requires_grad for p in self.chgnet.parameters())):
            return self.chgnet(graphs, task="e", return_atom_feas=True, return_crystal_feas=True)

    def pretrained_readout(self) -> torch.nn.Sequential:
        """A head that starts from CHGNet's own energy readout: a copy of its MLP's hidden layers (pretrained
        weights) and a fresh output layer. CHGNet 0.3.0 reads energies atom by atom and averages them; this head
        reads the averaged features (``crystal_fea`` / atoms), so it starts near, not at, CHGNet's readout."""
        layers = list(copy.deepcopy(self.chgnet.mlp.layers))
        out = layers[-1]
        return torch.nn.Sequential(*layers[:-1], torch.nn.Linear(out.in_features, 1)).to(out.weight.device)

    def embed_nodes(self, batch: Batch) -> Tensor:
        """CHGNet's ``atom_fea``, shape (n_atoms, 64)."""
        return torch.cat(self._features(batch)["atom_fea"], dim=0)

    def embed_graph(self, batch: Batch) -> Tensor:
        """CHGNet's ``crystal_fea`` (summed final atom features), per atom for ``mean``."""
        out = self._features(batch)
        crystal = out["crystal_fea"]
        return crystal / out["atoms_per_graph"].unsqueeze(1) if self.pooling == "mean" else crystal

    @torch.no_grad()
    def embed_layers(self, batch: Batch) -> dict[str, Tensor]:
        """Per depth, the atom features averaged per crystal, (n_crystals, 64): after the atom embedding
        and after each atom convolution, input to output (what a per-layer transferability score reads)."""
        modules = {"atom_embedding": self.chgnet.atom_embedding,
                   **{f"atom_conv_layers.{i}": m for i, m in enumerate(self.chgnet.atom_conv_layers)}}
        seen: dict[str, Tensor] = {}
        hooks = [m.register_forward_hook(lambda _m, _args, out, name=name: seen.__setitem__(name, out))
                 for name, m in modules.items()]
        try:
            counts = self._features(batch)["atoms_per_graph"]
        finally:
            for hook in hooks:
                hook.remove()
        owners = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
        return {name: scatter(seen[name], owners, dim=0, dim_size=len(counts), reduce="mean") for name in modules}
