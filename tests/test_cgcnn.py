"""CGCNN on PyG: the published checkpoints load exactly, predict like the original padded layout,
and follow the backbone interface."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pymatgen.core import Lattice, Structure
from torch_geometric.data import Batch

from tasksim_ray.featurize.crystal import structure_to_graph
from tasksim_ray.infra.cache import is_complete
from tasksim_ray.models import load_checkpoint
from tasksim_ray.models.cgcnn import CGCNN
from tasksim_ray.models.published import import_published, load_published, predict, read_checkpoint, task_name
from tasksim_ray.training.finetune import encoder_groups

MODELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "models"
CHECKPOINTS = sorted(MODELS.glob("*/*.pth.tar"))
needs_models = pytest.mark.skipif(len(CHECKPOINTS) != 26, reason="published checkpoints not at ../shared/data")
EFORM = MODELS / "cgcnn_mp2017" / "formation-energy-per-atom.pth.tar"


def two_crystals() -> Batch:
    """NaCl rock salt (2 atoms) and CsCl-type CsCl (2 atoms) in a 2x1x1 supercell (4 atoms)."""
    nacl = Structure(Lattice.cubic(5.64), ["Na"] * 4 + ["Cl"] * 4,
                     [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                      [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]).get_primitive_structure()
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).make_supercell([2, 1, 1])
    return Batch.from_data_list([structure_to_graph(nacl), structure_to_graph(cscl)])


def padded_reference(model: CGCNN, batch: Batch) -> torch.Tensor:
    """The original CGCNN forward on the dense (N, M) neighbour layout (txie-93/cgcnn model.py)."""
    n, m = batch.num_nodes, 12
    nbr_idx = batch.edge_index[0].view(n, m)  # every centre has exactly M edges, grouped by centre
    nbr_fea = batch.edge_attr.view(n, m, -1)
    h = model.embedding(batch.x)
    for conv in model.convs:
        total = torch.cat([h.unsqueeze(1).expand(n, m, h.shape[1]), h[nbr_idx], nbr_fea], dim=2)
        gated = conv.bn1(conv.fc_full(total).view(n * m, -1)).view(n, m, -1)
        filt, core = gated.chunk(2, dim=2)
        h = F.softplus(h + conv.bn2((torch.sigmoid(filt) * F.softplus(core)).sum(dim=1)))
    crys = torch.stack([h[batch.batch == g].mean(0) for g in range(batch.num_graphs)])
    return model.fc_out(F.softplus(model.conv_to_fc(F.softplus(crys))))


@needs_models
def test_every_published_checkpoint_loads_bit_for_bit() -> None:
    for path in CHECKPOINTS:
        model, mean, std, info = load_published(path)
        stored = read_checkpoint(path)
        ours = model.state_dict()
        for key, value in stored["state_dict"].items():
            assert torch.equal(ours[key], value), f"{path.name}: {key}"
        assert (mean, std) == (float(stored["normalizer"]["mean"]), float(stored["normalizer"]["std"]))
        assert info.task == task_name(path) and info.graph["radius"] == 8.0 and info.graph["max_neighbors"] == 12
    assert {task_name(p) for p in CHECKPOINTS} >= {"formation-energy-per-atom", "jarvisEg", "necond", "bandgap"}


@needs_models
def test_predict_applies_the_normaliser_and_matches_the_padded_original() -> None:
    model, mean, std, _ = load_published(EFORM)
    batch = two_crystals()
    raw = model(batch)
    torch.testing.assert_close(raw, padded_reference(model, batch), rtol=1e-5, atol=1e-5)
    pred = predict(model, batch, mean, std)
    torch.testing.assert_close(pred, raw * std + mean)
    # Materials Project formation energies: NaCl -2.1, CsCl -2.2 eV/atom (within the model's error)
    assert pred.squeeze(1).tolist() == pytest.approx([-2.1, -2.2], abs=0.35)


@needs_models
def test_semi_metal_classifier_predicts_log_probabilities() -> None:
    model, mean, std, info = load_published(MODELS / "cgcnn_mp2017" / "semi-metal-classification.pth.tar")
    assert info.hparams["classification"] and (mean, std) == (0.0, 1.0)
    out = predict(model, two_crystals(), mean, std)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


def test_embed_head_shapes_on_two_crystals_of_different_size() -> None:
    torch.manual_seed(0)
    model = CGCNN().eval()
    batch = two_crystals()
    assert batch.num_nodes == 2 + 4
    assert model.embed_nodes(batch).shape == (6, 64)
    feats = model.embed(batch)
    assert feats.shape == (2, model.embedding_dim) == (2, 64)
    assert model.embed(batch, "fc").shape == (2, 32)
    torch.testing.assert_close(model.head(feats), model(batch))
    torch.testing.assert_close(model.fc_out(model.embed(batch, "fc")), model(batch))
    head_params = {id(p) for p in model.head.parameters()}
    assert head_params == {id(p) for m in (model.conv_to_fc, model.fc_out) for p in m.parameters()}
    model.reset_head(3)
    assert model(batch).shape == (2, 3)


def test_encoder_groups_end_with_the_last_convolution() -> None:
    model = CGCNN(n_conv=3, n_h=2)
    groups = encoder_groups(model)
    assert [g for g, _ in groups] == ["embedding", "convs.0", "convs.1", "convs.2"]
    assert groups[-1][1] == [f"convs.2.{p}" for p in ("fc_full.weight", "fc_full.bias", "bn1.weight", "bn1.bias",
                                                       "bn2.weight", "bn2.bias")]
    assert "fcs.0.weight" in dict(model.named_parameters())


@needs_models
def test_import_published_serves_through_load_checkpoint(tmp_path: Path) -> None:
    written = import_published(MODELS / "cgcnn_mp2017", tmp_path / "models")
    experts = import_published(MODELS / "cgcnn_moe_extractors", tmp_path / "experts")
    assert (len(written), len(experts)) == (8, 18)
    assert all(is_complete(d) for d in [*written.values(), *experts.values()])
    model, info = load_checkpoint(written["formation-energy-per-atom"])
    ref, mean, std, _ = load_published(EFORM)
    assert (info.backbone, info.units, info.target_mean, info.target_std) == ("cgcnn", "eV/atom", mean, std)
    batch = two_crystals()
    torch.testing.assert_close(model.embed(batch), ref.embed(batch))


def test_convolution_gradients_match_the_gate_layer_on_concatenated_bonds() -> None:
    """The atom terms of ``fc_full`` are computed once per atom; output and every gradient equal
    the original W [v_i, v_j, u_ij] on each bond row up to float rounding."""
    batch = two_crystals()
    torch.manual_seed(0)
    conv = CGCNN().convs[0]
    h = torch.randn(batch.num_nodes, 64, requires_grad=True)
    conv(h, batch.edge_index, batch.edge_attr).square().sum().backward()
    fast = [h.grad.clone()] + [p.grad.clone() for p in conv.parameters()]
    h.grad = None
    conv.zero_grad()
    nbr, centre = batch.edge_index
    gated = conv.bn1(conv.fc_full(torch.cat([h[centre], h[nbr], batch.edge_attr], dim=1)))
    filt, core = gated.chunk(2, dim=1)
    summed = torch.zeros(batch.num_nodes, 64).index_add(0, centre, torch.sigmoid(filt) * F.softplus(core))
    F.softplus(h + conv.bn2(summed)).square().sum().backward()
    for got, want in zip(fast, [h.grad] + [p.grad for p in conv.parameters()]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(want.abs().max())))
