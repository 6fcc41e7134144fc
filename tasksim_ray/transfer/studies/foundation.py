"""The foundation fine-tuning study (``tasksim foundation``): the methods study with
``transfer.foundation`` models as sources.

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
from tasksim_ray.infra.cache import Artifacts, save_torch
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.models import load_checkpoint
from tasksim_ray.similarity.logme import logme_score
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_tasks
from tasksim_ray.stages.published import stage_foundation_model
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import mean_se
from tasksim_ray.transfer.cells import CellSettings, Recipe
from tasksim_ray.transfer.data import SplitData, stage_split_data
from tasksim_ray.transfer.studies.methods import MethodsStudy
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section

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


def _layer_features(run: Run, data: SplitData, task: str, positions: np.ndarray, directory: Path,
                    graphs: Callable[[], list[Data]]) -> dict[str, torch.Tensor]:
    """Each layer's pooled features of the pretrained model on the task's ``positions`` (cached)."""
    store = Artifacts(run.artifacts / "layer-features", "layer-features")
    key = store.key(data.stage.key, task, positions.tolist(), directory.parent.name)
    if not store.complete(key):
        model, _ = load_checkpoint(directory)
        if not hasattr(model, "embed_layers"):
            raise TasksimError(f"transfer.foundation: {type(model).__name__} has no per-layer features (embed_layers)")
        model.eval()
        parts = [model.embed_layers(Batch.from_data_list([graphs()[i] for i in positions[k:k + BATCH]]))
                 for k in range(0, len(positions), BATCH)]
        with store.build(key, task=task, model=directory.parent.name) as tmp:
            save_torch({n: torch.cat([p[n] for p in parts]) for n in parts[0]}, tmp / "features.pt")
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


class FoundationStudy(MethodsStudy):
    def check(self, cfg: PipelineConfig) -> None:
        tc = cfg.transfer
        if not tc.foundation:
            raise TasksimError("the foundation study fine-tunes transfer.foundation models: name one there")
        if tc.sources.kind == "published":
            raise TasksimError("transfer.foundation: the study takes published sources (methods study) or "
                               "foundation models, not both")
        other = [m for m in tc.methods if m in ("moe", "sources")]
        if other:
            raise TasksimError(f"transfer.methods {other}: not with transfer.foundation sources "
                               "(use scratch, finetune, variants)")

    @classmethod
    def build_context(cls, cfg: PipelineConfig, console: Console) -> Context:
        """The split rows and graphs, and the foundation models' folders as the sources."""
        run = Run(cfg, console)
        tasks = stage_tasks(run)
        ensure_ray(cfg.ray)
        data = SplitData.load(stage_split_data(run, tasks), tasks, cfg.transfer.standardize)
        tc = cfg.transfer
        settings = CellSettings(cfg.model, tc.finetune, tc.moe, cfg.seed, tc.scratch)
        return Context(run, data, ray.put(data.store()), settings, foundation_dirs(run, data.table))

    def recipes(self, ctx: Context) -> dict[str, Recipe]:
        """Scratch, and per foundation model ``<name>: finetune`` and ``<name>: <variant>`` recipes."""
        tc = ctx.run.cfg.transfer
        recipes = {"scratch": SCRATCH} if "scratch" in tc.methods else {}
        for name, d in ctx.model_dirs.items():
            if "finetune" in tc.methods:
                recipes[f"{name}: finetune"] = Recipe("finetune", f"{name}: finetune", (d,))
            if "variants" in tc.methods:
                recipes |= {f"{name}: {v}": Recipe("finetune", f"{name}: {v}", (d,), finetune=ft)
                            for v, ft in tc.variant_configs().items()}
        return recipes

    def arms(self, ctx: Context) -> dict[str, dict[str, list[Recipe]]]:
        """The same recipes for every target, each its own arm."""
        recipes = self.recipes(ctx)
        return {t: {label: [r] for label, r in recipes.items()} for t in ctx.data.targets}

    def plan(self, ctx: Context) -> list[Job]:
        jobs = super().plan(ctx)
        self.profile = depth_profile(ctx)  # before any training: what a user has for free
        return jobs

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        return super().summarise(ctx, done) | {"depth_profile": self.profile}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        section = super().render(out, result, ctx)
        section.markdown += _finetuning(out, result, section.figures)
        return section


def _finetuning(out: Path, r: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    """Per task: test MAE per split seed, mean ± SE and the improvement over scratch per recipe; the
    fine-tuned cells' per-layer weight drift and the pretrained model's depth profile (figures + tables)."""
    seeds, methods = r["seeds"], r["methods"]
    md = ["## Recipes per fold against random initialisation", "",
          "Test MAE per split seed, mean ± SE over seeds; improvement = (scratch - recipe) / scratch MAE (%), "
          "paired by seed, mean ± SE.", ""]
    for t, e in r["targets"].items():
        md += [f"### {t} ({e['units']}; train/val/test {'/'.join(map(str, e['n']))})", "",
               "| recipe | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± SE | improvement (%) |",
               "|---" * (len(seeds) + 3) + "|"]
        for m in methods:
            x = e[m]
            gain = f"{x['gain_mean']:.1f} ± {x['gain_se']:.1f}" if "gain_mean" in x else "-"
            md.append(f"| {m} | " + " | ".join(f"{v:.4g}" for v in x["values"])
                      + f" | {x['mean']:.4g} ± {x['se']:.2g} | {gain} |")
        md.append("")
    drift = {t: {m: e[m]["drift"] for m in methods if "drift" in e[m]} for t, e in r["targets"].items()}
    drift = {t: d for t, d in drift.items() if d}
    if drift:
        groups = list(next(iter(next(iter(drift.values())).values())))
        paths["layer_drift"] = out / "layer_drift.png"
        plots.plot_layer_drift(paths["layer_drift"], groups, {t: {m: list(g.values()) for m, g in d.items()}
                                                              for t, d in drift.items()},
                               "Weight drift from the pretrained weights per layer group (mean over seeds)")
        md += ["### Weight drift ||w - w0|| / ||w0|| per encoder layer group (mean over seeds)", ""]
        for t, d in drift.items():
            md += [f"| {t}: group | " + " | ".join(d) + " |", "|---" * (len(d) + 1) + "|"]
            md += [f"| {g} | " + " | ".join(f"{x[g]:.3g}" for x in d.values()) + " |" for g in groups]
            md.append("")
    prof = r.get("depth_profile")
    for name, per_task in (prof or {}).get("models", {}).items():
        paths[f"depth_profile_{name}"] = out / f"depth_profile_{name}.png"
        plots.plot_depth_profile(paths[f"depth_profile_{name}"], prof["layers"],
                                 {t: (x["mean"], x["se"]) for t, x in per_task.items()},
                                 f"{name} (pretrained): LogME of each layer's pooled features\n"
                                 "on each fold's training labels")
        md += [f"### Depth profile: {name} (pretrained), LogME per sample of each layer's mean-pooled features on "
               f"the training labels, mean ± SE over seeds ({prof['seconds']:.0f} s)", "",
               "| layer | " + " | ".join(per_task) + " |", "|---" * (len(per_task) + 1) + "|"]
        md += [f"| {layer} | " + " | ".join(f"{x['mean'][i]:.3f} ± {x['se'][i]:.2g}" for x in per_task.values()) + " |"
               for i, layer in enumerate(prof["layers"])]
        md.append("")
    return md
