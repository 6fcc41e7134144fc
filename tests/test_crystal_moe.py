"""The crystal MoE study end to end through Ray on two tiny real tasks with three published extractors:
every (task, method) is reported, gates are top-k, TL trains on the untouched frozen layers, and a
rerun reuses every cell."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from tasksim_ray.config import parse_config
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.progress import Console
from tasksim_ray.models.published import load_published
from tasksim_ray.transfer.crystal_moe import (
    Experts,
    expert_files,
    prepare_task,
    run_study,
    train_cell,
    with_atom_features,
)
from tasksim_ray.transfer.crystal_moe_report import write_report

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "crystals" / "moe_study"
EXTRACTORS = REPO.parent / "shared" / "data" / "models" / "cgcnn_moe_extractors"
EXPERTS = ["singletask_eform_32hfealen_best_model.pth.tar", "singletask_32hfl_jarvisEg_best_model.pth.tar",
           "singletask_gvrh_32hfealen_best_model.pth.tar"]
needs_extractors = pytest.mark.skipif(not all((EXTRACTORS / e).is_file() for e in EXPERTS),
                                      reason="published extractors not at ../shared/data")
TASKS = ["jarvis_dft_2d_dielectric_tbmbj_2022-04-11", "log_piezoelectric_tensor_RC"]


def config(workdir: Path):
    return parse_config({"workdir": str(workdir), "crystal_moe": {
        "tasks_dir": str(DATA / "moe_tasks"), "splits_dir": str(DATA / "moe_splits"),
        "extractors_dir": str(EXTRACTORS), "experts": EXPERTS, "tasks": TASKS, "seeds": [0],
        "max_epochs": 2, "patience": 2, "batch_size": 8, "k": 2}})


@needs_extractors
@pytest.mark.ray
def test_study_through_ray_reports_every_cell_and_reruns_from_cache(ray_local: None, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    results = run_study(cfg, Console())
    paths = write_report(results, cfg.crystal_moe, tmp_path / "report")
    assert {(r["task"], r["method"]) for r in results} == {(t, m) for t in TASKS for m in ("stl", "tl", "moe")}
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["task"] for r in rows] == TASKS
    assert all(float(r[f"{m}_mean"]) > 0 for r in rows for m in ("stl", "tl", "moe"))
    assert paths["heatmap"].stat().st_size > 0 and "| MoE |" in paths["markdown"].read_text()
    for r in results:
        if r["method"] == "moe":
            gates = list(r["gates"].values())
            assert sum(gates) == pytest.approx(1.0) and sum(g > 0 for g in gates) == 2
    cells = sorted((tmp_path / "artifacts" / "crystal-moe-cells").glob("*/result.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    assert len(cells) == 6
    assert run_study(cfg, Console()) == results
    assert [c.stat().st_mtime_ns for c in cells] == stamps


@needs_extractors
def test_tl_trains_last_conv_and_head_on_the_unchanged_frozen_layers(tmp_path: Path) -> None:
    cfg = config(tmp_path).crystal_moe
    experts, tl = expert_files(cfg)
    payload = prepare_task(DATA / "moe_tasks" / f"{TASKS[0]}.json.gz", DATA / "moe_splits", [0], [tl], True,
                           tmp_path / "cache")
    _, model = train_cell(payload, 0, "tl", cfg, Experts(EXTRACTORS, tuple(e.name for e in experts)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(("tails.0.", "head."))}
    published = load_published(tl)[0]
    assert not torch.equal(model.tails[0].fc_full.weight, published.convs[-1].fc_full.weight)  # it trained
    # the published extractor with only its last convolution swapped predicts what TL predicts:
    # the frozen layers TL trained on are the published ones, unchanged
    published.convs[-1] = model.tails[0]
    model.eval()
    published.eval()
    batch = Batch.from_data_list(unpack_graphs(payload["graphs"])[:5])
    ours = model(Batch.from_data_list(with_atom_features(payload, [0])[:5]))
    assert torch.allclose(model.head(published.embed(batch)), ours, atol=1e-5)
