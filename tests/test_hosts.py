"""Model hosts follow the resources: how many start, how many threads each runs, and what a host
keeps loaded under its memory budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from tasksim_ray.config import EmbedConfig
from tasksim_ray.embedding.hosts import HostGroup, ModelHost, model_bytes, plan_hosts
from tasksim_ray.featurize.graphstore import graph_to_bytes
from tasksim_ray.featurize.molecule import smiles_to_graph
from tasksim_ray.models import TaskModelInfo, save_checkpoint
from tasksim_ray.models.dmpnn import DMPNN

HP = {"hidden_dim": 16, "ffn_hidden_dim": 8, "depth": 2}
SMILES = ["CCO", "c1ccccc1O", "CC(=O)O", "CCN"]


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    dirs = {}
    for i in range(3):
        torch.manual_seed(i)
        dirs[f"t{i}"] = tmp_path / f"t{i}"
        save_checkpoint(dirs[f"t{i}"], DMPNN(**HP), TaskModelInfo("dmpnn", HP, f"t{i}", "", 0.0, 1.0))
    return dirs


def test_cpu_hosts_share_out_the_cores(ray_local: None) -> None:
    """On 2 CPUs: one 2-thread host by default (one process pays the imports), one per CPU with
    ``threads: 1``; an explicit count gets the cores shared out; GPU hosts follow the fractions."""
    assert plan_hosts(EmbedConfig(use_gpu="never"), 40) == plan_hosts(EmbedConfig(), 40)
    one = plan_hosts(EmbedConfig(), 40)
    assert (one.n_hosts, one.threads, one.num_gpus) == (1, 2, 0.0)
    per_cpu = plan_hosts(EmbedConfig(threads=1), 40)
    assert (per_cpu.n_hosts, per_cpu.threads) == (2, 1) and per_cpu.num_cpus == 0.5  # a CPU left for reads
    assert plan_hosts(EmbedConfig(hosts=2, threads=4), 40).threads == 1
    gpu = plan_hosts(EmbedConfig(use_gpu="always", gpu_fraction=0.25), 3)
    assert (gpu.n_hosts, gpu.threads, gpu.num_gpus) == (3, 1, 0.25)  # no more hosts than models


def test_group_embeds_with_the_planned_threads(ray_local: None, models: dict[str, Path]) -> None:
    graphs = [graph_to_bytes(smiles_to_graph(s)) for s in SMILES]
    group = HostGroup(EmbedConfig(threads=1), len(models))
    try:
        parts = list(group.map([graphs[:2], graphs[2:]], {k: str(v) for k, v in models.items()}))
        stats = group.stats()
    finally:
        group.close()
    assert len({s["pid"] for s in stats}) == 2 and all(s["threads"] == 1 for s in stats)
    assert [len(p["t0"]) for p in parts] == [2, 2] and sum(s["loads"] for s in stats) == 2 * len(models)


def test_host_keeps_the_recently_used_models_within_its_budget(models: dict[str, Path],
                                                               request: pytest.FixtureRequest) -> None:
    one = model_bytes(DMPNN(**HP))
    threads = torch.get_num_threads()
    host = ModelHost(budget_bytes=2 * one)  # in this process, 1 thread as on a host
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    batch = [graph_to_bytes(smiles_to_graph(s)) for s in SMILES]
    first = host.embed(batch, {"t0": str(models["t0"]), "t1": str(models["t1"])})
    host.embed(batch, {"t2": str(models["t2"])})  # the least recently used (t0) goes
    assert list(host.models) == [str(models["t1"]), str(models["t2"])] and host.loads == 3
    again = host.embed(batch, {"t0": str(models["t0"])})  # loaded again, the same bytes
    assert host.loads == 4 and len(host.models) == 2
    torch.manual_seed(0)
    model = DMPNN(**HP).eval()
    with torch.no_grad():
        want = model.embed(Batch.from_data_list([smiles_to_graph(s) for s in SMILES])).numpy()
    assert np.array_equal(first["t0"], again["t0"]) and np.array_equal(again["t0"], want)
