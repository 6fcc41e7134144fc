"""The CHGNet, MACE and ALIGNN adapters on real crystals: shapes, batch independence, checkpoint
round trips, fine-tuning layer groups, CHGNet's shipped weights, MACE training and foundation files.

The crystals (tests/data/crystals/adapters/structures.json) are six 2D materials with their
formation energies (JARVIS-DFT 2D) and bulk LiF and wurtzite GaN (Matbench phonons)."""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pymatgen.core import Structure
from torch_geometric.data import Batch, Data

from tasksim_ray.config import FinetuneConfig
from tasksim_ray.models import TaskModelInfo, build_model, load_checkpoint, save_checkpoint
from tasksim_ray.models.structures import GraphCache
from tasksim_ray.training.finetune import encoder_groups, finetune_options, head_names
from tasksim_ray.training.loop import fit

CRYSTALS = Path(__file__).parent / "data" / "crystals" / "adapters" / "structures.json"
ROWS = json.loads(CRYSTALS.read_text())
STRUCTURES = {r["id"]: Structure.from_dict(r["structure"]) for r in ROWS}
ELEMENTS = sorted({z for s in STRUCTURES.values() for z in s.atomic_numbers})
LIF, GAN = "matbench_log_phonons/69", "matbench_log_phonons/1004"  # 2 and 4 atoms
UNSAFE_LOAD_BEFORE = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")

# small settings: CHGNet is the shipped universal model as it is
HPARAMS: dict[str, dict[str, Any]] = {
    "chgnet": {},
    "mace": {"atomic_numbers": ELEMENTS, "num_channels": 16, "max_ell": 1, "radial_mlp": [16, 16]},
    "alignn": {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 32, "embedding_features": 16},
}
NAMES = list(HPARAMS)


def crystal(structure: Structure) -> Data:
    """What the crystal graph builder hands a backbone (CGCNN's x/edge fields aside)."""
    return Data(z=torch.tensor(structure.atomic_numbers), pos=torch.tensor(structure.cart_coords, dtype=torch.float32),
                cell=torch.tensor(structure.lattice.matrix, dtype=torch.float32).unsqueeze(0),
                num_nodes=len(structure))


def batch_of(*ids: str) -> Batch:
    return Batch.from_data_list([crystal(STRUCTURES[i]) for i in ids])


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # the machine's two cores are shared


@pytest.mark.parametrize("name", NAMES)
def test_embeddings_shapes_batch_independence_and_checkpoint(name: str, tmp_path: Path) -> None:
    model = build_model(name, HPARAMS[name]).eval()
    pair = batch_of(LIF, GAN)
    with torch.no_grad():
        graph, nodes, ffn = model.embed(pair), model.embed_nodes(pair), model.embed(pair, "ffn")
        alone = model.embed(batch_of(GAN))
        alone_nodes = model.embed_nodes(batch_of(GAN))
    assert graph.shape == (2, model.embedding_dim) and ffn.shape[0] == 2
    assert nodes.shape[0] == 2 + 4 and torch.isfinite(graph).all() and torch.isfinite(nodes).all()
    assert not torch.allclose(graph[0], graph[1])
    assert torch.allclose(alone[0], graph[1], atol=1e-5)
    assert torch.allclose(alone_nodes, nodes[2:], atol=1e-5)
    with pytest.raises(ValueError, match="unknown layer"):
        model.embed(pair, "node")

    save_checkpoint(tmp_path, model, TaskModelInfo(name, HPARAMS[name], "t", "eV", 0.0, 1.0))
    loaded, info = load_checkpoint(tmp_path)
    assert info.backbone == name
    with torch.no_grad():
        assert torch.equal(loaded.embed(pair), graph)
        assert torch.equal(loaded.embed_nodes(pair), nodes)
        loaded.reset_head(3)
        assert loaded(pair).shape == (2, 3)


@pytest.mark.parametrize("name", NAMES)
def test_finetuning_strategies_see_the_layer_groups(name: str) -> None:
    model = build_model(name, HPARAMS[name])
    groups = encoder_groups(model)
    heads = set(head_names(model))
    assert len(groups) == len(model.ENCODER_LAYERS) >= 3 and all(names for _, names in groups)
    encoder = [n for _, names in groups for n in names]
    assert len(encoder) == len(set(encoder)) and not heads & set(encoder)

    def trainable() -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    finetune_options(model, FinetuneConfig(strategy="head"), pretrained=True)
    assert trainable() == heads
    finetune_options(model, FinetuneConfig(strategy="last"), pretrained=True)
    assert trainable() == heads | set(groups[-1][1])
    opts = finetune_options(model, FinetuneConfig(strategy="full", gradual_unfreeze=1), pretrained=True)
    assert trainable() == heads
    opts.on_epoch_start(2)
    assert trainable() == heads | set(groups[-1][1]) | set(groups[-2][1])
    opts = finetune_options(model, FinetuneConfig(strategy="full", llrd=0.5, lr=1e-3), pretrained=True)
    assert trainable() == heads | set(encoder)
    lrs = [g["lr"] for g in opts.make_optimizer(model).param_groups]
    assert len(lrs) == 1 + len(groups) and lrs == sorted(lrs, reverse=True)

    # differentiable end to end: every layer group gets a gradient from the prediction
    model.train()
    model(batch_of(LIF, GAN)).pow(2).sum().backward()
    params = dict(model.named_parameters())
    for group, names in groups:
        assert any(params[n].grad is not None and params[n].grad.abs().sum() > 0 for n in names), group
    assert all(params[n].grad is not None for n in heads)



@pytest.mark.parametrize("name", NAMES)
def test_graph_cache_gives_the_uncached_embeddings(name: str) -> None:
    model = build_model(name, HPARAMS[name]).eval()
    uncached = build_model(name, HPARAMS[name] | {"graph_cache": 0}).eval()
    uncached.load_state_dict(model.state_dict())
    pair = batch_of(LIF, GAN)
    with torch.no_grad():
        first, again, reference = model.embed(pair), model.embed(pair), uncached.embed(pair)
        alone = model.embed(batch_of(GAN))
    assert len(model.graph_cache) == 2 and len(uncached.graph_cache) == 0
    assert torch.equal(first, again) and torch.equal(first, reference)
    assert torch.allclose(alone[0], first[1], atol=1e-5)
    assert len(copy.deepcopy(model).graph_cache) == 0 and len(pickle.loads(pickle.dumps(model)).graph_cache) == 0


def test_graph_cache_builds_each_crystal_once_and_stays_bounded() -> None:
    built: list[int] = []

    def build(z: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> int:
        built.append(len(z))
        return len(z)

    cache = GraphCache(max_size=2)
    assert cache.graphs(batch_of(LIF, GAN), build) == [2, 4] and built == [2, 4]
    assert cache.graphs(batch_of(GAN, LIF), build) == [4, 2] and built == [2, 4]
    moved = batch_of(LIF)
    moved.pos = moved.pos + 0.1  # other positions: another crystal, which evicts the least recent (GAN)
    assert cache.graphs(moved, build) == [2] and built == [2, 4, 2] and len(cache) == 2
    cache.graphs(batch_of(LIF, GAN), build)
    assert built == [2, 4, 2, 4]


def test_chgnet_is_the_frozen_universal_model() -> None:
    model = build_model("chgnet", {})
    assert not any(p.requires_grad for p in model.chgnet.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    model.eval()
    structures = [STRUCTURES[LIF], STRUCTURES[GAN]]
    reference = model.chgnet.predict_structure(structures, task="e", return_crystal_feas=True)
    with torch.no_grad():
        mean = model.embed(batch_of(LIF, GAN))
    for row, (ref, s) in enumerate(zip(reference, structures)):  # mean pooling: crystal_fea per atom
        assert torch.allclose(mean[row] * len(s), torch.as_tensor(ref["crystal_fea"]), atol=1e-4)
    untrained = build_model("chgnet", {"pretrained": False, "freeze": False})
    params = dict(untrained.named_parameters())
    assert all(params[n].requires_grad for _, names in encoder_groups(untrained) for n in names)
    assert not torch.equal(untrained.chgnet.atom_embedding.embedding.weight,
                           model.chgnet.atom_embedding.embedding.weight)


def test_fit_fine_tunes_chgnet_last_group() -> None:
    """``train.fit`` through the foundation model: the reopened last group moves, the rest stays."""
    model = build_model("chgnet", {})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [r for r in ROWS if r["e_form"] is not None]
    graphs = [crystal(STRUCTURES[r["id"]]) for r in rows]
    y = np.array([r["e_form"] for r in rows])
    cfg = FinetuneConfig(strategy="last", max_epochs=2, patience=2, batch_size=3, lr=1e-2)
    fit(model, graphs[:4], y[:4], graphs[4:], y[4:], finetune_options(model, cfg, pretrained=True),
        seed=0, mean=float(y.mean()), std=float(y.std()))
    last = set(encoder_groups(model)[-1][1])
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert last & moved and moved <= last | set(head_names(model))


def test_mace_trains_and_foundation_file_reproduces_it(tmp_path: Path) -> None:
    from tasksim_ray.models.mace import MACEBackbone

    torch.manual_seed(0)
    hp = HPARAMS["mace"]
    rows = [r for r in ROWS if r["e_form"] is not None]
    batch = batch_of(*(r["id"] for r in rows))
    y = torch.tensor([r["e_form"] for r in rows])
    model = MACEBackbone(**hp)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        optimizer.zero_grad()
        loss = (model(batch).squeeze(1) - y).pow(2).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    model.eval()
    with torch.no_grad():
        trained = model.embed_nodes(batch)
    torch.save(model.mace.state_dict(), tmp_path / "foundation.pt")
    save_checkpoint(tmp_path / "ckpt", model, TaskModelInfo("mace", hp, "e_form", "eV/atom", 0.0, 1.0))
    for path in (tmp_path / "foundation.pt", tmp_path / "ckpt" / "state_dict.pt"):
        reloaded = MACEBackbone(**hp, foundation_file=str(path)).eval()
        with torch.no_grad():
            assert torch.equal(reloaded.embed_nodes(batch), trained)

    torch.save(model.mace, tmp_path / "whole.model")  # MACE's own format: a pickled module
    with pytest.raises(ValueError, match="trust_pickle"):
        MACEBackbone(**hp, foundation_file=str(tmp_path / "whole.model"))
    trusted = MACEBackbone(**hp, foundation_file=str(tmp_path / "whole.model"), trust_pickle=True).eval()
    with torch.no_grad():
        assert torch.equal(trusted.embed_nodes(batch), trained)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == UNSAFE_LOAD_BEFORE


class _Marker:
    """Unpickling this writes a file: proof that a load ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "code ran"))


def test_a_model_folder_cannot_make_the_loader_unpickle(tmp_path: Path) -> None:
    """An edited config.json naming a pickle and trust_pickle (e.g. in a shared store) loads the weights
    from the state dict and never opens that file."""
    from tasksim_ray.models.mace import MACEBackbone

    hp = HPARAMS["mace"]
    model = MACEBackbone(**hp).eval()
    save_checkpoint(tmp_path / "ckpt", model, TaskModelInfo("mace", hp, "e_form", "eV/atom", 0.0, 1.0))
    marker = tmp_path / "pwned"
    torch.save(_Marker(marker), tmp_path / "evil.model")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config["hparams"] |= {"foundation_file": str(tmp_path / "evil.model"), "trust_pickle": True}
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    loaded, _ = load_checkpoint(tmp_path / "ckpt")
    assert not marker.exists()
    batch = batch_of(*(r["id"] for r in ROWS))
    with torch.no_grad():
        assert torch.equal(loaded.embed_nodes(batch), model.embed_nodes(batch))


def test_registry_imports_foundation_libraries_only_on_build() -> None:
    code = ("import sys, tasksim_ray.models as m; "
            "assert not {'chgnet', 'mace', 'alignn', 'e3nn'} & set(sys.modules), sorted(sys.modules); "
            "assert {'chgnet', 'mace', 'alignn'} <= set(m.BACKBONES)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def _scale_shift_mace(elements: list[int] = ELEMENTS) -> torch.nn.Module:
    """A small ScaleShiftMACE (MACE-MP's class) from mace's own constructor, as mace's test suite
    builds one (tests/test_foundations.py there; the repository keeps no small model file)."""
    from e3nn import o3
    from mace import modules

    torch.manual_seed(1)
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=len(elements),
        hidden_irreps=o3.Irreps("16x0e + 16x1o"), MLP_irreps=o3.Irreps("8x0e"),
        gate=torch.nn.functional.silu, atomic_energies=np.linspace(-3.0, -1.0, len(elements)),
        avg_num_neighbors=12.0, atomic_numbers=elements, correlation=2, radial_MLP=[16, 16],
        atomic_inter_scale=1.7, atomic_inter_shift=0.2).eval()


def test_scale_shift_mace_foundation_files_embed_as_mace_does(tmp_path: Path) -> None:
    """A ScaleShiftMACE file (weights-only with its config, or a trusted pickle) builds its own
    architecture; node embeddings are mace's own node_feats' invariant channels on the same crystals,
    and a model folder made from it rebuilds without the file."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from tasksim_ray.models.mace import MACEBackbone, _import_mace, save_foundation

    _import_mace()  # first, so the process environment stays as it was (see the mace test above)
    from mace.data import AtomicData, config_from_atoms
    from mace.tools import AtomicNumberTable, torch_geometric

    reference = _scale_shift_mace()
    ids = [r["id"] for r in ROWS]
    data = [AtomicData.from_config(config_from_atoms(AseAtomsAdaptor.get_atoms(STRUCTURES[i])),
                                   z_table=AtomicNumberTable(ELEMENTS), cutoff=5.0) for i in ids]
    with torch.no_grad():
        feats = reference(torch_geometric.Batch.from_data_list(data).to_dict(), compute_force=False)["node_feats"]
    # node_feats: 16x0e + 16x1o (64 numbers) after interaction 1, 16x0e after the last one
    expected = torch.cat([feats[:, :16], feats[:, 64:80]], dim=1)
    batch = batch_of(*ids)

    save_foundation(reference, str(tmp_path / "mp.pt"))
    torch.save(reference.double(), tmp_path / "mp.model")  # MACE-MP's own format: a float64 pickle
    with pytest.raises(ValueError, match="trust_pickle"):
        MACEBackbone(foundation_file=str(tmp_path / "mp.model"))
    for hp in ({"foundation_file": str(tmp_path / "mp.pt")},
               {"foundation_file": str(tmp_path / "mp.model"), "trust_pickle": True}):
        model = MACEBackbone(**hp).eval()
        assert type(model.mace).__name__ == "ScaleShiftMACE" and model.embedding_dim == 32
        with torch.no_grad():
            nodes = model.embed_nodes(batch)
        assert torch.allclose(nodes, expected, atol=1e-5), (nodes - expected).abs().max()

    save_checkpoint(tmp_path / "ckpt", model, TaskModelInfo("mace", hp, "e_form", "eV/atom", 0.0, 1.0))
    (tmp_path / "mp.model").unlink()
    loaded, info = load_checkpoint(tmp_path / "ckpt")
    assert info.hparams["architecture"]["atomic_numbers"] == ELEMENTS
    with torch.no_grad():
        assert torch.equal(loaded.embed_nodes(batch), nodes)
    assert os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == UNSAFE_LOAD_BEFORE


@pytest.mark.ray
@pytest.mark.usefixtures("ray_local")
def test_the_foundation_study_fine_tunes_a_scale_shift_mace_file(tmp_path: Path) -> None:
    """A MACE-MP-style file the user brings (transfer.foundation_files) is fine-tuned through the
    foundation study: all layers with L2-SP + BSS from the grid, against the same architecture from
    random initialisation (model.params.architecture), its cells keyed by the file's content."""
    import gzip

    from tasksim_ray.config import load_config
    from tasksim_ray.infra.progress import Console
    from tasksim_ray.models.mace import _import_mace, plain_config, save_foundation
    from tasksim_ray.transfer.runner import run_transfer

    _import_mace()  # first, so e3nn loads its constants (see the mace tests above)
    repo = Path(__file__).resolve().parents[1]
    tiny = repo / "tests" / "data" / "crystals" / "tiny_tasks" / "jarvis_dft_2d_exfol_energy.json.gz"
    rows = json.loads(gzip.decompress(tiny.read_bytes()))["data"]
    elements = sorted({z for r in rows for z in Structure.from_dict(r["structure"]).atomic_numbers})
    reference = _scale_shift_mace(elements)
    save_foundation(reference, str(tmp_path / "mp.pt"))
    task, both = "jarvis_2d_exfoliation", "mace_mp: full + L2-SP + BSS"
    cfg = load_config(repo / "configs" / "foundation_ft.yaml", {
        "workdir": str(tmp_path / "run"), "data.path": str(tiny), "data.files": {}, "data.split.max_train": 8,
        "data.split.seeds": [0], "transfer.tasks": [task], "transfer.finetune.max_epochs": 1,
        "transfer.finetune.batch_size": 4,
        "model": {"backbone": "mace", "params": {"architecture": plain_config(reference)}},
        "transfer.foundation": ["mace_mp"],
        "transfer.foundation_files": {"mace_mp": {"backbone": "mace", "params": {"foundation_file": str(tmp_path / "mp.pt")}}},
        "transfer.penalty_grid": {"full + L2-SP + BSS": {"l2sp": [1e-3], "bss": [1e-3]}},
        "transfer.methods": ["scratch", "variants"], "transfer.variant_models": {}, "transfer.foundation_scratch": False,
        "transfer.probe": False, "transfer.lr_grid": [],
        "transfer.paper_tables": [{"table": "003/table1", "study": "foundation", "aliases": {"jdft2d": task},
                                   "methods": {"mace_ri": "scratch", "mace_mp0": both}}]})
    out = run_transfer(cfg, ["foundation"], Console(quiet=True))
    r = out["studies"]["foundation"]
    assert r["methods"] == ["scratch", "mace_mp: full", both]
    e = r["targets"][task]
    for m in r["methods"][1:]:
        assert np.isfinite(e[m]["mean"]) and set(e[m]["drift"]) >= {"mace.node_embedding", "mace.interactions.0"}
        assert all(v > 0 for v in e[m]["drift"].values())  # every layer trained
    assert r["depth_profile"]["unsupported"] == ["mace_mp"]
    row = next(x for x in r["paper_comparison"]["003/table1"]["rows"] if x["row"] == "jdft2d")
    assert row["task"] == task and {c["column"] for c in row["cells"] if c["ours_mean"] is not None} == {
        "mace_ri", "mace_mp0", "rel_ri_mp0"}
    folders = list((tmp_path / "run" / "artifacts" / "foundation-model").glob("*/mace_mp-*"))
    assert len(folders) == 1
    from tasksim_ray.models.mace import MACEBackbone

    batch = Batch.from_data_list([crystal(Structure.from_dict(r["structure"])) for r in rows[:3]])
    loaded, _ = load_checkpoint(folders[0])
    with torch.no_grad():  # the folder holds the file's weights
        expected = MACEBackbone(foundation_file=str(tmp_path / "mp.pt")).eval().embed_nodes(batch)
        assert torch.allclose(loaded.eval().embed_nodes(batch), expected)


def test_chgnet_keeps_its_pretrained_readout_when_asked() -> None:
    """finetune.keep_readout: the head starts from CHGNet's own readout MLP (its hidden layers' pretrained
    weights, a fresh output layer) and trains with the head."""
    from tasksim_ray.training.finetune import use_pretrained_readout

    model = build_model("chgnet", {})
    use_pretrained_readout(model)
    own = model.chgnet.mlp.layers
    assert torch.equal(model.head[0].weight, own[0].weight) and model.head[0].weight is not own[0].weight
    assert model.head[-1].out_features == 1
    opts = finetune_options(model, FinetuneConfig(strategy="head", keep_readout=True), pretrained=True)
    assert opts and {n for n, p in model.named_parameters() if p.requires_grad} == set(head_names(model))
    assert any(n.startswith("ffn.0.") for n in head_names(model))
