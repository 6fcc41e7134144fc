"""The foundation fine-tuning study (``tasksim foundation``): the methods study with
``transfer.foundation`` models as sources.

Per task and split seed, on the whole training split: each foundation model (shipped, or a file the
user brings, ``transfer.foundation_files``) fine-tuned as ``finetune`` and with each of
``transfer.variants`` (strategies, regularisers), against ``scratch``, the config's backbone from
random initialisation (CHGNet with ``pretrained: false``). A variant in ``transfer.penalty_grid``
trains once per combination of its regularisers' weights; per task and split seed the combination
with the lowest validation MAE is its result (the MACE-MP paper's "determined with hyperparameter
search"). The cells are the methods study's (each its own cached artifact; fine-tuning cells record
per-layer weight drift). Before any training, the depth profile: LogME of each layer's pooled
features of the pretrained model on each split seed's training labels, the per-layer feature-label
score a user has for free.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from torch_geometric.data import Batch, Data

from tasksim_ray.config import FinetuneConfig, PipelineConfig
from tasksim_ray.data.tasks import TaskTable
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import Artifacts, save_torch
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.models import TaskModelInfo, build_model, load_checkpoint, save_checkpoint
from tasksim_ray.registry import BACKBONES
from tasksim_ray.similarity.logme import logme_score
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_tasks
from tasksim_ray.stages.published import stage_foundation_model
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import mean_se
from tasksim_ray.transfer.cells import CellSettings, Recipe, run_cells
from tasksim_ray.transfer.data import SplitData, stage_split_data
from tasksim_ray.transfer.foundation_report import (add_binary_scores, binary_markdown, paired_improvements,
                                                    paired_markdown)
from tasksim_ray.transfer.grid import (chosen_points, convergence, convergence_markdown, grid_markdown, grid_points,
                                       keep_chosen, point_label, select_grid)
from tasksim_ray.transfer.studies.methods import MethodsStudy
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section

BATCH = 64  # crystals per forward pass of the depth profile


def foundation_dirs(run: Run, table: TaskTable) -> dict[str, str]:
    """``transfer.foundation`` models as sources, by name: their model folders (weights from the
    installed package, or from the user's file). They read crystals, so molecule tasks cannot use them."""
    names, files = run.cfg.transfer.foundation, run.cfg.transfer.foundation_files
    if names and table.kind != "crystal":
        raise TasksimError(f"transfer.foundation {names}: foundation models read crystals; these tasks are "
                           f"{table.kind}s")
    clash = [n for n in names if n in table.names]
    if clash:
        raise TasksimError(f"transfer.foundation: {clash} is also a task name; rename the task (data.aliases)")
    return {n: str(stage_foundation_file(run, n) if n in files else stage_foundation_model(run, n)) for n in names}


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def stage_foundation_file(run: Run, name: str) -> Path:
    """The model folder of a foundation model the user brings as a file (``transfer.foundation_files``),
    built once; the folder is named by the model and the file's content, which transfer cells key on."""
    spec = run.cfg.transfer.foundation_files[name]
    files = [Path(v) for k, v in spec.params.items() if k.endswith("_file") and v]
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise TasksimError(f"transfer.foundation_files.{name}: file not found: {missing or 'no *_file parameter'}")
    digest = hashlib.sha256("".join(_file_digest(f) for f in files).encode()).hexdigest()[:12]
    folder = f"{name}-{digest}"

    def build(out: Path) -> dict[str, Any]:
        model = build_model(spec.backbone, spec.params)
        save_checkpoint(out / folder, model, TaskModelInfo(spec.backbone, spec.params, name, "", 0.0, 1.0))
        return {"backbone": spec.backbone, "digest": digest}

    settings = {k: v for k, v in spec.params.items() if not k.endswith("_file")}  # the file is in the folder name
    # the shipped models' artifact kind, keyed apart by "file"
    return run.stage("foundation-model", ["file", name, spec.backbone, settings, folder], build).path / folder


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
    out: dict[str, Any] = {"models": {}, "unsupported": []}
    for name, d in ctx.model_dirs.items():
        backbone = json.loads((Path(d) / "config.json").read_text())["backbone"]
        if not hasattr(BACKBONES.get(backbone), "embed_layers"):  # no per-layer features (MACE today)
            out["unsupported"].append(name)
            continue
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
        if "scratch" in tc.methods and any(k.endswith("_file") for k in cfg.model.params):
            raise TasksimError("model.params: the scratch arm is model.backbone from random initialisation; a *_file "
                               "parameter would load weights (give MACE the file's architecture instead)")

    @classmethod
    def build_context(cls, cfg: PipelineConfig, console: Console) -> Context:
        """The split rows and graphs, and the foundation models' folders as the sources."""
        run = Run(cfg, console)
        tasks = stage_tasks(run)
        ensure_ray(cfg.ray)
        data = SplitData.load(stage_split_data(run, tasks), tasks, cfg.transfer.standardize,
                              cfg.transfer.objective)
        tc = cfg.transfer
        settings = CellSettings(cfg.model, tc.finetune, tc.moe, cfg.seed, tc.scratch)
        return Context(run, data, ray.put(data.store()), settings, foundation_dirs(run, data.table))

    def recipes(self, ctx: Context) -> dict[str, Recipe]:
        """Scratch, and per foundation model ``<name>: finetune`` and ``<name>: <variant>`` recipes (with
        ``transfer.probe``, the mean predictor and ``<name>: linear probe``); a gridded arm is one recipe
        per grid point, ``<name>: <variant> [lr=.., l2sp=.., bss=..]`` (``transfer.lr_grid`` grids every
        trained arm, scratch included, over the same learning rates)."""
        tc = ctx.run.cfg.transfer
        lrs = {"lr": tc.lr_grid} if tc.lr_grid else {}
        self.grid: dict[str, tuple[str, dict[str, float]]] = {}  # grid point label -> (arm label, values)
        recipes: dict[str, Recipe] = {"mean predictor": Recipe("mean", "mean predictor")} if tc.probe else {}

        def add(kind: str, arm: str, checkpoints: tuple[str, ...], ft: FinetuneConfig | None,
                grid: dict[str, list[float]]) -> None:
            for values in grid_points(grid):
                label = point_label(arm, values)
                config = (ft or tc.finetune).with_weights(values) if values else ft
                recipes[label] = (SCRATCH if label == "scratch" else
                                  Recipe(kind, label, checkpoints, finetune=config))  # type: ignore[arg-type]
                if values:
                    self.grid[label] = (arm, values)

        if "scratch" in tc.methods:
            add("scratch", "scratch", (), None, lrs)
        for name, d in ctx.model_dirs.items():
            if tc.foundation_scratch is True or name in (tc.foundation_scratch or []):
                add("scratch", f"{name}: scratch", (d,), None, lrs)
            if tc.probe:
                recipes[f"{name}: linear probe"] = Recipe("probe", f"{name}: linear probe", (d,))
            if "finetune" in tc.methods:
                add("finetune", f"{name}: finetune", (d,), None, lrs)
            if "variants" in tc.methods:
                for v, ft in tc.variant_configs().items():
                    if name in tc.variant_models.get(v, [name]):
                        add("finetune", f"{name}: {v}", (d,), ft, tc.penalty_grid.get(v) or lrs)
        return recipes

    def arms(self, ctx: Context) -> dict[str, dict[str, list[Recipe]]]:
        """The same recipes for every target, each its own arm."""
        recipes = self.recipes(ctx)
        return {t: {label: [r] for label, r in recipes.items()} for t in ctx.data.targets}

    def plan(self, ctx: Context) -> list[Job]:
        """Every arm's cells; with ``grid_seeds: first`` the first split seed's cells train here, first,
        and the other seeds keep only each gridded arm's point chosen on its validation split."""
        jobs = super().plan(ctx)
        self.profile = depth_profile(ctx)  # before any training: what a user has for free
        tc, first = ctx.run.cfg.transfer, ctx.run.cfg.data.split.seeds[0]
        if self.grid and tc.grid_seeds == "first":
            tuning = [(c, r) for c, r in jobs if c.fold == first]
            cells = run_cells(ctx.store_ref, tuning, ctx.settings, ctx.run.artifacts / "cells", tc.num_cpus,
                              tc.num_gpus)
            jobs = keep_chosen(jobs, self.grid, first, chosen_points(cells, self.grid))
        return jobs

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        """The methods study's summary with each gridded variant as one method: per task and split
        seed, its grid point with the lowest validation MAE (every point's cost counts)."""
        expanded, grid = self.by_target, self.grid
        chosen, search = select_grid(done.cells, grid)
        self.by_target = {t: {} for t in expanded}
        for t, arms in expanded.items():
            for label, recipes in arms.items():
                variant = grid[label][0] if label in grid else label
                self.by_target[t].setdefault(variant, [replace(recipes[0], label=variant)])
        result = super().summarise(ctx, Done(chosen, done.sizes, done.folds))
        self.by_target = expanded
        for variant in {v for v, _ in grid.values()}:
            mine = [c for c in done.cells if c["recipe"] in grid and grid[c["recipe"]][0] == variant]
            result["cost"][variant] = {"cells": len(mine), "epochs": float(np.mean([c["epochs_run"] for c in mine])),
                                       "s_per_epoch": float(np.mean([c["seconds"] / max(c["epochs_run"], 1)
                                                                     for c in mine])),
                                       "s_per_cell": float(np.mean([c["seconds"] for c in mine]))}
        result |= {"cells": done.cells, "grid": search, "depth_profile": self.profile,
                   "convergence": convergence(chosen)}
        add_binary_scores(result, chosen)
        return result | {"paired": paired_improvements(result)}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        section = super().render(out, result, ctx)
        section.markdown += (binary_markdown(result) + paired_markdown(result["paired"], result["seeds"])
                             + _finetuning(out, result, section.figures) + convergence_markdown(result)
                             + grid_markdown(result) + _drift_beside_paper(result))
        return section

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        """Per task, each method's test MAE over split seeds (mean, std, seeds), or for a binary target its
        ROC-AUC: MACE-RI is our scratch and MACE-MP-0 a fine-tuned recipe, by ``transfer.paper_tables``'
        ``methods``."""
        return {t: {m: e[m].get("auc", e[m]) for m in result["methods"]} for t, e in result["targets"].items()}


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
    models = sorted({m.split(": ", 1)[0] for e in r["targets"].values() for m in methods if "drift" in e[m]})
    for model in models:  # one figure and table per foundation model: their layer groups differ
        drift = {t: {m: e[m]["drift"] for m in methods if "drift" in e[m] and m.startswith(f"{model}: ")}
                 for t, e in r["targets"].items()}
        drift = {t: d for t, d in drift.items() if d}
        groups = list(next(iter(next(iter(drift.values())).values())))
        name = "layer_drift" if len(models) == 1 else f"layer_drift_{model}"
        paths[name] = out / f"{name}.png"
        plots.plot_layer_drift(paths[name], groups, {t: {m: list(g.values()) for m, g in d.items()}
                                                     for t, d in drift.items()},
                               f"{model}: weight drift from the pretrained weights per layer group (mean over seeds)")
        md += [f"### {model}: weight drift ||w - w0|| / ||w0|| per encoder layer group (mean over seeds)", ""]
        for t, d in drift.items():
            md += [f"| {t}: group | " + " | ".join(d) + " |", "|---" * (len(d) + 1) + "|"]
            md += [f"| {g} | " + " | ".join(f"{x[g]:.3g}" for x in d.values()) + " |" for g in groups]
            md.append("")
    prof = r.get("depth_profile")
    if prof and prof.get("unsupported"):
        md += [f"No depth profile for {', '.join(prof['unsupported'])}: the backbone gives no per-layer features.", ""]
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


def _drift_beside_paper(r: dict[str, Any]) -> list[str]:
    """Where fine-tuning moved the weights (per recipe: the least and most drifted encoder groups)
    beside what the MACE-MP fine-tuning paper states for its Fig. 2b (003/facts)."""
    from tasksim_ray.papers import lookup

    facts = lookup("003/facts")
    rows = [(t, m, e[m]["drift"]) for t, e in r["targets"].items() for m in r["methods"] if "drift" in e[m]]
    if not rows:
        return []
    minimal, largest, peak = (facts.get(k) for k in ("drift_minimal_layers", "drift_largest",
                                                      "drift_peak_classification"))
    md = ["### Layer drift beside the paper (Fig. 2b)", "",
          f"The paper (no values printed): minimal drift in the first {minimal.value} layers "
          f"(\"{minimal.quote}\"); larger drifts in the {largest.value}; a "
          f"peak at the {peak.value}. Ours, per recipe: the groups in order of drift.",
          "", "| task | recipe | two least drifted (depth) | most drifted (depth) | first two groups least drifted? |",
          "|---|---|---|---|---|"]
    for t, m, drift in rows:
        groups = list(drift)
        order = sorted(groups, key=lambda g: drift[g])
        low = ", ".join(f"{g} ({groups.index(g) + 1})" for g in order[:2])
        first_two = set(order[:2]) == set(groups[:2])
        md.append(f"| {t} | {m} | {low} | {order[-1]} ({groups.index(order[-1]) + 1} of {len(groups)}) | "
                  f"{'yes' if first_two else 'no'} |")
    return [*md, ""]
