import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.molecule import smiles_to_graph
from tasksim_ray.models import FORMAT_VERSION, TaskModelInfo, load_checkpoint, save_checkpoint
from tasksim_ray.models.dmpnn import DMPNN


def _reference_embed(model: DMPNN, smiles: str) -> torch.Tensor:
    """D-MPNN written with explicit loops over directed bonds, for one molecule."""
    g = smiles_to_graph(smiles)
    src, dst = g.edge_index.tolist()
    edges = list(zip(src, dst))
    h0 = {e: model.W_i(torch.cat([g.x[e[0]], g.edge_attr[k]])) for k, e in enumerate(edges)}
    h = {e: torch.relu(v) for e, v in h0.items()}
    for _ in range(model.depth - 1):
        h = {(v, w): torch.relu(h0[(v, w)] + model.W_h(
            sum((h[(k, u)] for (k, u) in edges if u == v and k != w), torch.zeros_like(h0[(v, w)]))))
            for (v, w) in edges}
    atoms = []
    for v in range(g.num_nodes):
        m = sum((h[(k, u)] for (k, u) in edges if u == v), torch.zeros(model.embedding_dim))
        atoms.append(torch.relu(model.W_o(torch.cat([g.x[v], m]))))
    return torch.stack(atoms).mean(0)


def test_dmpnn_matches_loop_reference_and_batches_independently() -> None:
    torch.manual_seed(0)
    model = DMPNN(hidden_dim=16, depth=3, ffn_hidden_dim=8, aggregation="mean").eval()
    smiles = ["CC(=O)O", "c1ccccc1N", "C", "OCC#N"]
    batch = Batch.from_data_list([smiles_to_graph(s) for s in smiles])
    with torch.no_grad():
        emb = model.embed(batch)
        assert emb.shape == (4, 16)
        for i, s in enumerate(smiles):
            assert torch.allclose(emb[i], _reference_embed(model, s), atol=1e-5)
        assert model(batch).shape == (4, 1)
        model.aggregation = "norm"  # sum over atoms / 100
        assert torch.allclose(model.embed(batch)[1], emb[1] * 7 / 100, atol=1e-6)  # aniline: 7 atoms


def test_checkpoint_folder_round_trip(tmp_path: Path) -> None:
    model = DMPNN(hidden_dim=12, depth=2, ffn_hidden_dim=6)
    info = TaskModelInfo("dmpnn", {"hidden_dim": 12, "depth": 2, "ffn_hidden_dim": 6}, "mu", "D", 2.5, 1.5)
    save_checkpoint(tmp_path / "ckpt", model, info)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "state_dict.pt"]
    loaded, info2 = load_checkpoint(tmp_path / "ckpt")
    assert info2 == replace(info, format_version=FORMAT_VERSION, backbone_version=1)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("backbone_version", 7, "dmpnn version 7, this code is version 1"),
    ("format_version", FORMAT_VERSION + 1, "upgrade tasksim_ray")])
def test_model_folder_versions_are_checked_on_load(tmp_path: Path, field: str, value: int, says: str) -> None:
    """A folder written by another backbone version or a newer format is refused in one line, as
    matgl refuses a model of another version; a folder without versions (format 1) still loads."""
    info = TaskModelInfo("dmpnn", {"hidden_dim": 8, "depth": 2, "ffn_hidden_dim": 4}, "mu", "D", 0.0, 1.0)
    save_checkpoint(tmp_path / "ckpt", DMPNN(hidden_dim=8, depth=2, ffn_hidden_dim=4), info)
    config = tmp_path / "ckpt" / "config.json"
    written = json.loads(config.read_text())
    assert written["format_version"] == FORMAT_VERSION and written["backbone_version"] == 1
    config.write_text(json.dumps({k: v for k, v in written.items() if k not in ("format_version", "backbone_version")}))
    assert load_checkpoint(tmp_path / "ckpt")[1].format_version == 1
    config.write_text(json.dumps(written | {field: value}))
    with pytest.raises(TasksimError, match=says) as err:
        load_checkpoint(tmp_path / "ckpt")
    assert "\n" not in str(err.value)
