"""The crystal MoE study as a config of the transfer engine (the ``methods`` study), through Ray on
two tiny real tasks with three published extractors: every (task, method) is reported, gates are
top-k, a rerun reuses every cell, and task files no test has seen (renamed files and columns) run
from config alone."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tasksim_ray.config import parse_config
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.progress import Console
from tasksim_ray.transfer.runner import run_transfer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "crystals" / "moe_study"
EXTRACTORS = REPO.parent / "shared" / "data" / "models" / "cgcnn_moe_extractors"
EXPERTS = ["singletask_eform_32hfealen_best_model.pth.tar", "singletask_32hfl_jarvisEg_best_model.pth.tar",
           "singletask_gvrh_32hfealen_best_model.pth.tar"]
needs_extractors = pytest.mark.skipif(not all((EXTRACTORS / e).is_file() for e in EXPERTS),
                                      reason="published extractors not at ../shared/data")
FILES = ["jarvis_dft_2d_dielectric_tbmbj_2022-04-11", "log_piezoelectric_tensor_RC"]
TASKS = ["jarvis_2d_dielectric_tbmbj", "log_piezoelectric_tensor"]  # the known files' study targets


def config(workdir: Path, tasks_dir: Path, split: dict[str, Any] | None = None, **transfer: Any):
    section = {"studies": ["methods"], "methods": ["scratch", "finetune", "moe"], "tasks": TASKS,
               "standardize": "train_val",
               "sources": {"kind": "published", "path": str(EXTRACTORS), "names": EXPERTS,
                           "finetune_from": EXPERTS[0]},
               "finetune": {"strategy": "head", "max_epochs": 2, "patience": 2, "batch_size": 8},
               "moe": {"k": 2, "penalty_on": "gates", "train_last": False, "head_layers": 3, "schedule": "cosine"},
               "scratch": {"optimizer": "sgd", "lr": 0.02, "min_lr": 1e-5}} | transfer
    section = {k: v for k, v in section.items() if v is not None}  # methods=None: the recipes alone
    split = split or {"kind": "published", "path": str(DATA / "moe_splits"), "seeds": [0]}
    return parse_config({"workdir": str(workdir), "data": {"source": "crystals", "path": str(tasks_dir), "split": split},
                         "model": {"backbone": "cgcnn", "params": {"atom_fea_len": 16, "n_conv": 2, "h_fea_len": 16}},
                         "transfer": section})


@needs_extractors
@pytest.mark.ray
def test_methods_study_reports_every_cell_and_reruns_from_cache(ray_local: None, tmp_path: Path) -> None:
    cfg = config(tmp_path, DATA / "moe_tasks", paper_tables=[{"table": "001/table3"}])
    out = run_transfer(cfg, ["methods"], Console())
    r = out["studies"]["methods"]
    beside = r["paper_comparison"]["001/table3"]  # the paper's Table 3 beside ours, from the stored numbers
    assert json.dumps(beside) and "log_piezoelectric_tensor" in json.dumps(beside)
    assert list(r["targets"]) == TASKS
    assert {(c["target"], c["recipe"]) for c in r["cells"]} == {(t, m) for t in TASKS for m in r["methods"]}
    assert all(r["targets"][t][m]["mean"] > 0 for t in TASKS for m in r["methods"])
    assert all(c["n"] == [16, 6, 6] and c["size"] is None and c["epochs_run"] >= 1 for c in r["cells"])
    for c in r["cells"]:
        if c["recipe"] == "moe":
            assert sum(c["gates"]) == pytest.approx(1.0) and sum(g > 0 for g in c["gates"]) == 2
    md = Path(out["paths"]["markdown"]).read_text()
    assert "## Methods" in md and "| moe |" in md and "## Beside the paper: 001/table3" in md
    assert Path(out["paths"]["methods_gates"]).stat().st_size > 0
    _published_page_is_generated_from_the_run(Path(out["paths"]["markdown"]).parent, tmp_path / "results" / "moe")
    cells = sorted((tmp_path / "artifacts" / "cells").glob("*/result.json"))
    stamps = [c.stat().st_mtime_ns for c in cells]
    assert len(cells) == 6
    again = run_transfer(cfg, ["methods"], Console())["studies"]["methods"]
    assert again["cells"] == r["cells"]
    assert [c.stat().st_mtime_ns for c in cells] == stamps


def _published_page_is_generated_from_the_run(report: Path, dest: Path) -> None:
    """`tasksim publish`: the results page carries the run's record and resolved config, the
    report's tables, and JSON without the per-cell records."""
    from typer.testing import CliRunner

    from tasksim_ray.cli import app

    out = CliRunner().invoke(app, ["publish", str(report), str(dest), "--title", "MoE, tiny"])
    assert out.exit_code == 0, out.output
    page = (dest / "README.md").read_text()
    assert page.startswith("# MoE, tiny") and "| commit |" in page and "| machine |" in page
    assert "## Methods" in page and "## Beside the paper: 001/table3" in page
    assert (dest / "config.yaml").is_file() and (dest / "methods_gates.png").is_file()
    assert "cells" not in json.loads((dest / "methods.json").read_text())["methods"]
    bad = CliRunner().invoke(app, ["publish", str(dest / "nowhere"), str(dest)])
    assert bad.exit_code == 2 and "no run.json" in bad.output


def _renamed_copy(src: Path, dst: Path, columns: dict[str, str]) -> None:
    with gzip.open(src, "rt") as fh:
        doc = json.load(fh)
    doc["columns"] = [columns.get(c, c) for c in doc["columns"]]
    doc["data"] = [{columns.get(k, k): v for k, v in row.items()} for row in doc["data"]]
    with gzip.open(dst, "wt") as fh:
        json.dump(doc, fh)


@needs_extractors
@pytest.mark.ray
def test_renamed_task_files_and_columns_run_from_config_alone(ray_local: None, tmp_path: Path) -> None:
    tasks = tmp_path / "my_tasks"
    tasks.mkdir()
    _renamed_copy(DATA / "moe_tasks" / f"{FILES[0]}.json.gz", tasks / "dielectric.json.gz",
                  {"structure": "crystal", "dielectric tbmbj": "eps"})
    _renamed_copy(DATA / "moe_tasks" / f"{FILES[1]}.json.gz", tasks / "piezo.json.gz",
                  {"structure": "crystal", "log(1 + eij_max)": "log_piezo", "eij_max": "piezo"})
    splits = tmp_path / "splits"
    shutil.copytree(DATA / "moe_splits", splits)
    keys = {"eps": "jarvis_2d_dielectric_tbmbj", "log_piezo": "piezoelectric_tensor"}
    raw = config(tmp_path / "run", tasks, {"kind": "published", "path": str(splits), "seeds": [0], "keys": keys},
                 tasks=["eps", "log_piezo"]).model_dump()
    raw["data"]["structure_column"] = "crystal"
    cfg = parse_config(raw)
    r = run_transfer(cfg, ["methods"], Console())["studies"]["methods"]
    assert list(r["targets"]) == ["eps", "log_piezo"]
    assert all(c["n"] == [16, 6, 6] for c in r["cells"])
    # a task the published splits do not know, without a key: one line naming the key, before Ray work
    raw["data"]["split"]["keys"] = {"eps": keys["eps"]}
    with pytest.raises(TasksimError, match="no split key 'log_piezo'"):
        run_transfer(parse_config(raw), ["methods"], Console())
    # seeded random splits need no split files at all
    raw["data"]["split"] = {"kind": "random", "seeds": [0, 1], "fractions": [0.7, 0.15, 0.15]}
    r = run_transfer(parse_config(raw), ["methods"], Console())["studies"]["methods"]
    assert {c["fold"] for c in r["cells"]} == {0, 1} and all(sum(c["n"]) == 28 for c in r["cells"])


@needs_extractors
@pytest.mark.ray
def test_each_source_in_turn_scores_the_logme_recommendation(ray_local: None, tmp_path: Path) -> None:
    tasks = [*TASKS, "piezoelectric_tensor"]  # the raw column of the piezo file is a third task
    cfg = config(tmp_path, DATA / "moe_tasks", methods=["scratch", "sources"], tasks=tasks)
    out = run_transfer(cfg, ["methods"], Console(quiet=True))
    r = out["studies"]["methods"]
    sources = ["eform_32hfealen", "32hfl_jarvisEg", "gvrh_32hfealen"]  # names without the shared words
    assert r["methods"] == ["scratch", "from"]  # one best-of arm: fine-tuned from each source in turn
    assert all(f"from: {s}" in r["targets"][t] for t in tasks for s in sources)
    rec = r["recommendation"]
    assert set(rec["recommenders"]) == {"logme", "combined"} and set(rec["targets"]) == set(tasks)
    assert "largest source" not in rec["baselines"]  # published extractors do not say what they saw
    for t in tasks:  # the gains are the cells' own test MAEs against scratch
        mae = {c["recipe"]: c["test_mae"] for c in r["cells"] if c["target"] == t}
        best = max(sources, key=lambda s: mae["scratch"] - mae[f"from: {s}"])
        assert r["targets"][t]["from"]["source"] == best
        assert rec["targets"][t]["measured_best"] == best
        assert rec["targets"][t]["measured_best_gain"] == pytest.approx(
            100 * (mae["scratch"] - mae[f"from: {best}"]) / mae["scratch"])
    assert rec["cost"]["transfer_matrix_cells"] == len(tasks) * len(sources)
    md = Path(out["paths"]["recommendation_md"]).read_text()
    assert "| logme |" in md and "shows its best source" in Path(out["paths"]["markdown"]).read_text()


@needs_extractors
@pytest.mark.ray
def test_atom_features_entering_the_last_convolution_come_from_the_hosts(ray_local: None, tmp_path: Path) -> None:
    """What a MoE whose last convolutions train reads (``node:last_input``) is served by the model
    hosts, equal to the extractor's own in-process features, atoms stacked in input order."""
    from tasksim_ray.config import EmbedConfig
    from tasksim_ray.embedding.service import embed_table, graph_table, read_embedded
    from tasksim_ray.featurize.graphstore import graph_from_bytes
    from tasksim_ray.models.published import extractor_features, load_published, write_published

    with gzip.open(DATA / "moe_tasks" / f"{FILES[0]}.json.gz", "rt") as fh:
        rows = json.load(fh)["data"][:9]
    frame, _ = graph_table([json.dumps(r["structure"]) for r in rows], [f"{i:03d}" for i in range(9)], "crystal")
    frame.to_parquet(tmp_path / "graphs.parquet", index=False)
    folder = write_published(EXTRACTORS / EXPERTS[1], tmp_path / "model")
    embed_table(tmp_path / "graphs.parquet", {"x": folder}, EmbedConfig(batch_size=4), tmp_path / "out", "node:last_input")
    ids, got = read_embedded(tmp_path / "out", ["x"], "node:last_input")
    graphs = [graph_from_bytes(b) for b in frame["graph"]]
    atoms, _ = extractor_features(load_published(EXTRACTORS / EXPERTS[1])[0], graphs)
    assert ids == frame["id"].tolist() and [len(a) for a in got["x"]] == [g.num_nodes for g in graphs]
    assert np.allclose(np.concatenate(got["x"]), atoms.numpy(), atol=1e-5)


@needs_extractors
@pytest.mark.ray
def test_moe_with_trainable_last_convolutions_runs_on_host_features(ray_local: None, tmp_path: Path) -> None:
    moe = {"k": 2, "penalty_on": "gates", "train_last": True, "head_layers": 3, "schedule": "cosine"}
    cfg = config(tmp_path, DATA / "moe_tasks", methods=["moe"], moe=moe)
    r = run_transfer(cfg, ["methods"], Console())["studies"]["methods"]
    assert {c["target"] for c in r["cells"]} == set(TASKS) and all(c["test_mae"] > 0 for c in r["cells"])
    cached = [torch.load(f, weights_only=True) for f in (tmp_path / "artifacts" / "expert-features").glob("*/features.pt")]
    assert len(cached) == 2 * len(EXPERTS) and all(f["h_in"].shape[1] == 64 for f in cached)


@needs_extractors
@pytest.mark.ray
def test_named_recipes_per_target_experts_best_of_and_moe_settings(ray_local: None, tmp_path: Path) -> None:
    """Tables 1, 2 and 4 of the MoE paper as recipes: a best-of arm over sources chosen per target, a
    mixture over per-target experts, and a mixture with its own k, each reported under its name."""
    chosen = {TASKS[0]: EXPERTS[:2], TASKS[1]: EXPERTS[1:]}
    recipes = {"STL": {"kind": "scratch"}, "Best TL-(2)": {"kind": "best_of", "sources": chosen},
               "MoE-(2)": {"kind": "moe", "experts": chosen}, "k=1": {"kind": "moe", "moe": {"k": 1}}}
    cfg = config(tmp_path, DATA / "moe_tasks", recipes=recipes, methods=None)
    r = run_transfer(cfg, ["methods"], Console(quiet=True))["studies"]["methods"]
    assert r["methods"] == list(recipes)
    names = {"singletask_eform_32hfealen_best_model.pth.tar": "eform_32hfealen",
             "singletask_32hfl_jarvisEg_best_model.pth.tar": "32hfl_jarvisEg",
             "singletask_gvrh_32hfealen_best_model.pth.tar": "gvrh_32hfealen"}
    for t in TASKS:
        e = r["targets"][t]
        each = {names[f]: e[f"Best TL-(2): {names[f]}"]["mean"] for f in chosen[t]}
        assert e["Best TL-(2)"]["source"] == min(each, key=each.get)  # the best of the target's own sources
        assert e["Best TL-(2)"]["mean"] == min(each.values())
        assert set(e["MoE-(2)"]["gates"]) == set(chosen[t])
        assert sum(e["MoE-(2)"]["gates"].values()) == pytest.approx(1)
        assert len(e["k=1"]["gates"]) == 3 and sorted(e["k=1"]["gates"].values())[-1] == pytest.approx(1.0)
    with pytest.raises(TasksimError, match="names no entry for target 'log_piezoelectric_tensor'"):
        run_transfer(config(tmp_path, DATA / "moe_tasks", methods=None,
                            recipes={"TL": {"kind": "finetune", "source": {TASKS[0]: EXPERTS[0]}}}), ["methods"])
