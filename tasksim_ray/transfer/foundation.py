"""The foundation fine-tuning study: the ``methods`` study with ``transfer.foundation`` models as sources.

Per task and split seed, on the whole training split: each shipped foundation model fine-tuned as
``finetune`` and with each of ``transfer.variants`` (strategies, regularisers), against ``scratch``,
the config's backbone from random initialisation (CHGNet with ``pretrained: false``). The cells are the
methods study's (each its own cached artifact; fine-tuning cells record per-layer weight drift). Before
any training, the depth profile: LogME of each layer's pooled features of the pretrained model on each
split seed's training labels, the per-layer feature-label score a user has for free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch_geometric.data import Batch, Data

from tasksim_ray.config import PipelineConfig
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import Artifacts, stable_hash
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.models import load_checkpoint
from tasksim_ray.similarity.logme import logme_score
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_tasks
from tasksim_ray.stages.published import stage_foundation_model
from tasksim_ray.transfer.analysis import mean_se
from tasksim_ray.transfer.cells import CellSettings, Recipe
from tasksim_ray.transfer.data import SplitData, stage_split_data
from tasksim_ray.transfer.study import SCRATCH, Context, Plan, plan_methods

BATCH = 64  # crystals per forward pass of the depth profile


def foundation_dirs(run: Run, table: TaskTable) -> dict[str, str]:
    """``transfer.foundation`` models as sources, by name: their model folders (weights from the
    installed package). They read crystals, so molecule tasks cannot use them."""
    names = run.cfg.transfer.foundation
    if names and table.kind != "crystal":
        raise TasksimError(f"transfer.foundation {names}: foundation models read crystals; these tasks are "
                           f"{table.kind}s")
    clash = [n for n in names if n in table.names]
    if clash:
        raise TasksimError(f"transfer.foundation: {clash} is also a task name; rename the task (data.aliases)")
    return {n: str(stage_foundation_model(run, n)) for n in names}


def foundation_recipes(cfg: PipelineConfig, dirs: dict[str, str]) -> dict[str, Recipe]:
    """Scratch, and per foundation model ``<name>: finetune`` and ``<name>: <variant>`` recipes."""
    tc = cfg.transfer
    other = [m for m in tc.methods if m in ("moe", "sources")]
    if other:
        raise TasksimError(f"transfer.methods {other}: not with transfer.foundation sources "
                           "(use scratch, finetune, variants)")
    recipes = {"scratch": SCRATCH} if "scratch" in tc.methods else {}
    for name, d in dirs.items():
        if "finetune" in tc.methods:
            recipes[f"{name}: finetune"] = Recipe("finetune", f"{name}: finetune", (d,))
        if "variants" in tc.methods:
            recipes |= {f"{name}: {v}": Recipe("finetune", f"{name}: {v}", (d,), finetune=ft)
                        for v, ft in tc.variant_configs().items()}
    return recipes


def foundation_context(cfg: PipelineConfig, console: Console) -> tuple[Context, dict[str, Recipe]]:
    """The methods study's split rows and graphs, the foundation models' folders, a recipe per method."""
    if cfg.transfer.sources.kind == "published":
        raise TasksimError("transfer.foundation: the methods study takes published sources or foundation "
                           "models, not both")
    run = Run(cfg, console)
    tasks = stage_tasks(run)
    ensure_ray(cfg.ray)
    data = SplitData.load(stage_split_data(run, tasks), tasks, cfg.transfer.standardize)
    dirs = foundation_dirs(run, data.table)
    tc = cfg.transfer
    settings = CellSettings(cfg.model, tc.finetune, tc.moe, cfg.seed, tc.scratch)
    return Context(run, data, ray.put(data.store()), settings, dirs), foundation_recipes(cfg, dirs)


def _layer_features(run: Run, data: SplitData, task: str, positions: np.ndarray, directory: Path,
                    graphs: Callable[[], list[Data]]) -> dict[str, torch.Tensor]:
    """Each layer's pooled features of the pretrained model on the task's ``positions`` (cached)."""
    store = Artifacts(run.artifacts / "layer-features", "layer-features")
    key = stable_hash("layer-features", data.stage.key, task, positions.tolist(), directory.parent.name)
    if not store.complete(key):
        model, _ = load_checkpoint(directory)
        if not hasattr(model, "embed_layers"):
            raise TasksimError(f"transfer.foundation: {type(model).__name__} has no per-layer features (embed_layers)")
        model.eval()
        parts = [model.embed_layers(Batch.from_data_list([graphs()[i] for i in positions[k:k + BATCH]]))
                 for k in range(0, len(positions), BATCH)]
        with store.build(key, task=task, model=directory.parent.name) as tmp:
            torch.save({n: torch.cat([p[n] for p in parts]) for n in parts[0]}, tmp / "features.pt")
    return torch.load(store.path(key) / "features.pt", weights_only=True)


def depth_profile(ctx: Context) -> dict[str, Any]:
    """Per foundation model, task and layer: LogME of the pretrained model's pooled layer features on
    each split seed's training labels, mean ± SE over seeds (layers input to output)."""
    data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
    assert isinstance(data, SplitData)
    start = time.perf_counter()
    graphs = cache(lambda: unpack_graphs(ray.get(ctx.store_ref)))  # unpacked only if a feature is missing
    out: dict[str, Any] = {"models": {}}
    for name, d in ctx.model_dirs.items():
        per_task = {}
        for t in data.targets:
            cells = [data.cell(t, i, s) for i, s in enumerate(seeds)]
            positions = np.unique(np.concatenate([c.train_pos for c in cells]))
            ctx.run.log("transfer-data", f"{t}: {name} layer features of {len(positions)} training crystals")
            feats = _layer_features(ctx.run, data, t, positions, Path(d), graphs)
            out["layers"] = list(feats)
            scores = np.array([[logme_score(f[np.searchsorted(positions, c.train_pos)].double().numpy(), c.y_train)
                                for c in cells] for f in feats.values()])  # (layer, seed)
            per_task[t] = {"mean": [mean_se(row)[0] for row in scores], "se": [mean_se(row)[1] for row in scores],
                           "values": scores.tolist()}
        out["models"][name] = per_task
    out["seconds"] = time.perf_counter() - start
    return out


def plan_foundation(ctx: Context, recipes: dict[str, Recipe]) -> Plan:
    """The methods study's cells and summary, with the depth profile computed before them."""
    base = plan_methods(ctx, recipes)
    profile = depth_profile(ctx)
    return Plan(base.name, base.jobs, lambda cells: base.finish(cells) | {"depth_profile": profile})
