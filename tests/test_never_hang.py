"""Never hang, never return garbage (issue 27), through the CLI: resources no node can give, a config
that says nothing, divergence, and crystal graph settings other than the defaults. Each case is one
line on stderr and exit 2 before any model trains, or (graph settings) a run that works.

Duplicate columns and empty configs are with the other bad inputs (``test_bad_input.py``), the
HTTP cases in ``test_serving.py``, interrupts and full disks in ``test_interrupts.py``, nodes that
die in ``test_multinode.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tasksim_ray.cli import app
from tasksim_ray.config import EmbedConfig, parse_config
from tasksim_ray.embedding.hosts import HostGroup
from tasksim_ray.embedding.service import graph_table
from tasksim_ray.errors import TasksimError, TrainingDiverged
from tasksim_ray.featurize.crystal import GraphSettings, structure_to_graph
from tasksim_ray.featurize.molecule import smiles_to_graph
from tasksim_ray.infra import resources
from tasksim_ray.infra.cache import Artifacts
from tasksim_ray.infra.jobs import Job, JsonResults, run_jobs
from tasksim_ray.models import build_model
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.training.loop import FitOptions, fit

from .conftest import REPO, TINY_CONFIG

pytestmark = pytest.mark.ray
CRYSTAL_CONFIG = REPO / "configs" / "crystal_tiny.yaml"
EXTRACTORS = REPO.parent / "shared" / "data" / "models" / "cgcnn_moe_extractors"
GRAPH = {"data.graph.radius": 6.0, "data.graph.step": 0.5, "data.graph.max_neighbors": 6}  # not CGCNN's 8, 0.2, 12


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("never_hang")  # shared: the data stages are cached after the first case


def _cli(args: list[str], workdir: Path, sets: dict[str, object]) -> tuple[int, list[str], str]:
    """(exit code, stderr's non-empty lines, stdout) of ``tasksim ARGS`` in this process."""
    result = CliRunner().invoke(app, [*args, "--set", f"workdir={workdir}",
                                      *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]])
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()], result.stdout


# (verb, settings, what the one line names): resources that no node of this machine (2 CPUs, no
# GPU, no autoscaler) can ever give, each refused before the first Ray task, whichever verb asks
RESOURCES = {
    "train-gpu": (["run"], {"train.num_gpus": 1}, "train.num_gpus 1"),
    "train-fractional-gpu": (["pretrain"], {"train.num_gpus": 0.25}, "train.num_gpus 0.25"),
    "train-cpus": (["run"], {"train.num_cpus": 16}, "train.num_cpus 16"),
    "embed-gpu-always": (["embed"], {"embed.use_gpu": "always"}, "embed.use_gpu always"),
    "transfer-gpu": (["finetune", "--target", "alpha", "--source", "mu"], {"transfer.num_gpus": 0.5},
                     "transfer.num_gpus 0.5"),
    "search-trial-gpu": (["search"], {"search.gpus_per_trial": 1}, "search.gpus_per_trial 1"),
    "budget-workers": (["pretrain", "--subset", "mu,alpha"], {"transfer.budget.workers": 2},
                       "transfer.budget.worker_cpus 1 (x workers 2)"),
}


@pytest.mark.parametrize("case", list(RESOURCES))
def test_impossible_resources_are_one_line_before_training(ray_local: None, workdir: Path, case: str) -> None:
    verb, sets, named = RESOURCES[case]
    start = time.monotonic()
    code, lines, _ = _cli([verb[0], str(TINY_CONFIG), *verb[1:]], workdir, sets)
    assert code == 2 and len(lines) == 1 and named in lines[0], lines
    assert "no node of the cluster has" in lines[0] or "more CPU than the cluster can have" in lines[0]
    assert not (workdir / "artifacts" / "models").exists() and time.monotonic() - start < 60


def test_autoscaler_node_types_count_as_what_the_cluster_can_have() -> None:
    gpu = [resources.Request("each job", {"CPU": 1, "GPU": 0.5}, {"GPU": "train.num_gpus 0.5"})]
    workers = [resources.Request("workers", {"CPU": 4}, {"CPU": "transfer.budget.worker_cpus 4"}, count=3,
                                 plus={"CPU": 1})]
    head = [{"CPU": 2.0}]
    resources.check(gpu, resources.Capacity(head, [({"CPU": 8.0, "GPU": 1.0}, 0 + 2)], autoscaler=True))
    resources.check(workers, resources.Capacity(head, [({"CPU": 4.0}, 3)], autoscaler=True))  # 2 + 12 >= 13
    resources.check(gpu, resources.Capacity(head, [], autoscaler=True))  # types unknown: the pending limit decides
    with pytest.raises(TasksimError, match=r"train.num_gpus 0.5: each job asks for 1 CPU \+ 0.5 GPU, but no node "
                                           r"or autoscaler node type of the cluster has GPU"):
        resources.check(gpu, resources.Capacity(head, [({"CPU": 8.0}, 2)], autoscaler=True))
    with pytest.raises(TasksimError, match=r"worker_cpus 4: workers need 3 x 4 CPU at once beside the 1 CPU"):
        resources.check(workers, resources.Capacity(head, [({"CPU": 4.0}, 2)], autoscaler=True))


def _nothing() -> int:
    return 0


def test_a_request_no_node_can_run_fails_after_the_pending_limit(ray_local: None, tmp_path: Path) -> None:
    """What the up-front check cannot rule out (an autoscaler that never delivers, a node that died)
    waits ray.pending_timeout_s, not for ever: in the job runner and for the model hosts."""
    resources.set_pending_timeout(2.0)
    try:
        start = time.monotonic()
        with pytest.raises(TasksimError, match=r"job 'gpu job' has waited \d+ s for 1 CPU \+ 1 GPU: no node"):
            run_jobs([Job("k", "gpu job", _nothing, (), num_gpus=1)], JsonResults(Artifacts(tmp_path, "x")))
        frame, _ = graph_table(["CCO", "CCN", "CCC"], ["a", "b", "c"])
        group = HostGroup(EmbedConfig(use_gpu="always", hosts=1))
        with pytest.raises(TasksimError, match=r"a model host has waited \d+ s for 0.5 CPU \+ 0.25 GPU"):
            list(group.map([list(frame["graph"])], {}))
        group.close()
        assert time.monotonic() - start < 30
    finally:
        resources.set_pending_timeout(600.0)


def test_a_huge_run_says_so_before_it_starts(ray_local: None, workdir: Path) -> None:
    # the warning comes before featurising; the impossible GPU then stops the run before training
    code, lines, out = _cli(["pretrain", str(TINY_CONFIG)], workdir, {"train.max_epochs": 100000, "train.num_gpus": 1})
    assert "warning: estimated work: 4 models x 300 molecules x up to 100000 epochs" in out.replace("\n", " ")
    assert code == 2 and "train.num_gpus 1" in lines[0]


def test_divergence_stops_the_run_naming_task_epoch_and_setting(ray_local: None, tmp_path: Path) -> None:
    code, lines, _ = _cli(["run", str(TINY_CONFIG)], tmp_path, {"train.lr": 1e6})
    assert code == 2 and len(lines) == 1, lines
    assert "(pretrain), epoch 0" in lines[0] and "lower train.lr" in lines[0] and "diverged" in lines[0]
    artifacts = tmp_path / "artifacts"
    assert not list((artifacts / "models").glob("*/manifest.json"))  # no diverged model saved
    assert not (artifacts / "embeddings").exists() and not (tmp_path / "report").exists()


def _graphs(n: int = 24) -> tuple[list, np.ndarray]:
    smiles = ["C" * (i % 6 + 1) + "O" * (i % 3) for i in range(n)]
    return [smiles_to_graph(s) for s in smiles], np.arange(n, dtype=float)


@pytest.mark.parametrize(("stage", "setting"), [("finetune", "transfer.finetune.lr"),
                                                ("scratch", "transfer.scratch.lr"),
                                                ("moe", "transfer.moe.expert_lr"), ("search", "search.lr")])
def test_every_kind_of_training_stops_on_divergence(stage: str, setting: str) -> None:
    """Transfer cells (scratch, fine-tuning, MoE) and search trials all train in the one loop."""
    graphs, y = _graphs()
    torch.manual_seed(0)
    opts = FitOptions(3, None, 8, 1e12, stage=stage, task="alpha")
    with pytest.raises(TrainingDiverged, match=f"task 'alpha' \\({stage}\\), epoch \\d.*lower {setting}"):
        fit(DMPNN(hidden_dim=16, ffn_hidden_dim=8, depth=2), graphs[:16], y[:16] * 1e3, graphs[16:], y[16:], opts,
            0, 0.0, 1e-3)


def test_a_diverging_trial_fails_and_tune_records_it(ray_local: None, tmp_path: Path) -> None:
    from ray import tune

    from tasksim_ray.training.loop import Trainer

    def trial(config: dict) -> None:
        graphs, y = _graphs()
        trainer = Trainer(DMPNN(hidden_dim=8, ffn_hidden_dim=8, depth=1), graphs[:16], y[:16] * 1e3, graphs[16:],
                          y[16:], FitOptions(3, None, 8, config["lr"], stage="search", task="alpha"), 0, 0.0, 1e-3)
        while not trainer.done:
            tune.report({"objective": trainer.run_epoch()["val_score"]})

    grid = tune.Tuner(tune.with_resources(trial, {"cpu": 1}), param_space={"lr": tune.grid_search([1e-3, 1e12])},
                      run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0,
                                                failure_config=tune.FailureConfig(max_failures=0))).fit()
    by_lr = {r.config["lr"]: r for r in grid}
    assert by_lr[1e-3].error is None and np.isfinite(by_lr[1e-3].metrics["objective"])
    assert "TrainingDiverged" in repr(by_lr[1e12].error) and "lower search.lr" in str(by_lr[1e12].error)


def test_crystal_graph_settings_flow_into_the_model(ray_local: None, tmp_path: Path) -> None:
    """CGCNN pretrains at radius 6, step 0.5, 6 neighbours: bond features 13 wide, the model built so."""
    code, lines, _ = _cli(["pretrain", str(CRYSTAL_CONFIG)], tmp_path, GRAPH | {"train.max_epochs": 1})
    assert code == 0, lines
    configs = [json.loads(p.read_text()) for p in (tmp_path / "artifacts" / "models").glob("*/config.json")]
    assert len(configs) == 3 and all(c["hparams"]["nbr_fea_len"] == 13 for c in configs)


def test_published_checkpoints_refuse_other_graph_settings(tmp_path: Path) -> None:
    if not EXTRACTORS.is_dir():
        pytest.skip(f"{EXTRACTORS} not here")
    code, lines, _ = _cli(["run", str(CRYSTAL_CONFIG)], tmp_path,
                          GRAPH | {"published.path": EXTRACTORS, "similarity.metrics": "[rsa, cka]"})
    assert code == 2 and len(lines) == 1 and "the published checkpoints need data.graph radius 8" in lines[0], lines
    assert not (tmp_path / "artifacts").exists()  # refused before any work


SMALL = {"cgcnn": {"atom_fea_len": 16, "n_conv": 1, "h_fea_len": 16},
         "alignn": {"alignn_layers": 1, "gcn_layers": 1, "hidden_features": 16, "embedding_features": 8},
         "chgnet": {}, "mace": {"num_channels": 8, "max_ell": 1, "radial_mlp": [8, 8]}}


@pytest.mark.parametrize("backbone", list(SMALL))
def test_every_crystal_backbone_trains_at_other_graph_settings(backbone: str) -> None:
    from pymatgen.core import Structure

    rows = [r for r in json.loads((REPO / "tests" / "data" / "crystals" / "adapters" / "structures.json").read_text())
            if r["e_form"] is not None]  # the six 2D materials
    structures = [Structure.from_dict(r["structure"]) for r in rows]
    params = SMALL[backbone] | ({"atomic_numbers": sorted({z for s in structures for z in s.atomic_numbers})}
                                if backbone == "mace" else {})
    graph = {k.split(".")[-1]: v for k, v in GRAPH.items()}
    cfg = parse_config({"data": {"source": "crystals", "path": "x", "graph": graph},
                        "model": {"backbone": backbone, "params": params}})
    graphs = [structure_to_graph(s, GraphSettings.from_config(cfg.data.graph)) for s in structures]
    torch.manual_seed(0)
    model = build_model(backbone, cfg.model.hparams())
    y = np.array([r["e_form"] for r in rows], dtype=float)
    result = fit(model, graphs[:4], y[:4], graphs[4:], y[4:], FitOptions(1, None, 2, 1e-3), 0, float(y.mean()),
                 float(y.std()))
    assert result.epochs_run == 1 and np.isfinite(result.best_val_mae)
    if backbone == "cgcnn":
        assert model.convs[0].fc_full.in_features == 2 * 16 + 13 == 2 * 16 + graphs[0].edge_attr.shape[1]
    if backbone == "alignn":
        assert model.graph_args["two_body_cutoff"] == 6.0 and model.graph_args["max_neighbors"] == 6
