"""SevenNet-0 as a foundation backbone: its shipped weights load bit-exact through the weights-only
loader, the scratch arm is the same architecture at random init (with the fixed message normalisers),
embeddings are per-atom intensive, and the encoder's layer groups are what fine-tuning sees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from tasksim_ray.models import build_model
from tasksim_ray.models.sevenn import SevenNetBackbone, build_sevenn, shipped_checkpoint
from tasksim_ray.training.finetune import encoder_groups

A = 5.64  # rock-salt NaCl, primitive fcc cell


def _nacl(supercell: int = 1) -> Data:
    cell = np.array([[0, A / 2, A / 2], [A / 2, 0, A / 2], [A / 2, A / 2, 0]])
    pos = np.array([[0.0, 0, 0], [A / 2, 0, 0]])
    if supercell > 1:  # repeat along the first lattice vector
        pos = np.concatenate([pos + k * cell[0] for k in range(supercell)])
        cell = cell * np.array([[supercell], [1], [1]])
    z = [11, 17] * supercell
    return Data(z=torch.tensor(z), pos=torch.tensor(pos, dtype=torch.float32),
                cell=torch.tensor(cell, dtype=torch.float32).unsqueeze(0), num_nodes=len(z))


@pytest.fixture(scope="module")
def pretrained() -> SevenNetBackbone:
    torch.set_num_threads(1)
    return SevenNetBackbone().eval()


def test_weights_equal_the_checkpoint_bit_exact(pretrained: SevenNetBackbone) -> None:
    state = shipped_checkpoint()["model_state_dict"]
    mine = pretrained.sevenn.state_dict()
    assert mine and set(mine) <= set(state)
    assert all(torch.equal(mine[k], state[k]) for k in mine)
    readout = {k for k in state if k.split(".")[0] in ("reduce_input_to_hidden", "reduce_hidden_to_energy",
                                                      "rescale_atomic_energy")}
    assert set(state) - set(mine) == readout  # only the energy readout is left out
    # SevenNet-0's 842,623 parameters (5 of them the convolutions' fixed normalisers, buffers here)
    assert sum(p.numel() for p in build_sevenn(shipped_checkpoint()["config"]).parameters()) == 842_623
    assert not any(p.requires_grad for p in pretrained.sevenn.parameters())  # frozen by default


def test_embeddings_are_intensive_and_the_scratch_arm_is_finite(pretrained: SevenNetBackbone) -> None:
    with torch.no_grad():
        one, two = pretrained.embed(Batch.from_data_list([_nacl(1), _nacl(2)]))
    assert one.shape == (128,) and torch.allclose(one, two, atol=1e-5)  # a supercell embeds like its cell
    torch.manual_seed(0)
    scratch = build_model("sevenn", {"pretrained": False, "freeze": False}).eval()
    with torch.no_grad():
        out = scratch.embed(Batch.from_data_list([_nacl(1)]))
    assert torch.isfinite(out).all()
    state = shipped_checkpoint()["model_state_dict"]
    p0 = dict(scratch.sevenn.named_parameters())["0_convolution.weight_nn.layer0.weight"]
    assert not torch.equal(p0, state["0_convolution.weight_nn.layer0.weight"])  # random weights
    groups = [g for g, _ in encoder_groups(scratch)]
    assert groups[0] == "sevenn.edge_embedding" and groups[-1] == "sevenn.4_self_interaction_2"
    assert all(n for _, n in encoder_groups(scratch)) and all(p.requires_grad for p in scratch.sevenn.parameters())
