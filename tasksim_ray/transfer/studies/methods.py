"""The methods study (after Chang, Wang & Ertekin, npj Comput. Mater. 2022): per task and split
seed, on the whole training split, each arm of ``transfer.recipes`` (or the ``transfer.methods``
shorthand): single-task learning from scratch, fine-tuning from one published extractor, the best
of fine-tuning from each of several, and mixtures of extractors with their own MoE settings. The
published extractors' frozen layers run once per task on the model hosts (cached stages), so a
cell trains only what its recipe trains."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import ray

from tasksim_ray.config import PipelineConfig, RecipeConfig
from tasksim_ray.config.studies import for_target
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_tasks
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import mean_se
from tasksim_ray.transfer.cells import CellSettings, Recipe
from tasksim_ray.transfer.data import SplitData, stage_split_data
from tasksim_ray.transfer.report import write_recommendation
from tasksim_ray.transfer.studies.published import frozen_features, source_names, source_recommendation
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section, Study

Arms = dict[str, dict[str, list[Recipe]]]  # target -> arm name -> its recipes (several for best_of)


def arm_configs(cfg: PipelineConfig) -> dict[str, RecipeConfig]:
    """The arms: ``transfer.recipes``, or the ``transfer.methods`` shorthand as recipes."""
    tc = cfg.transfer
    if tc.recipes:
        return dict(tc.recipes)
    shorthand = {"scratch": RecipeConfig(kind="scratch"), "moe": RecipeConfig(kind="moe"),
                 "finetune": RecipeConfig(kind="finetune", source=tc.sources.finetune_from or ""),
                 "from": RecipeConfig(kind="best_of", sources=[p.name for p in _all_files(cfg)])}
    return {("from" if m == "sources" else m): shorthand["from" if m == "sources" else m] for m in tc.methods}


def _all_files(cfg: PipelineConfig) -> list[Path]:
    src = cfg.transfer.sources
    folder = Path(src.path or "")
    return [folder / n for n in src.names or sorted(p.name for p in folder.glob("*.pth.tar"))]


def _named(cfg: PipelineConfig, arm: RecipeConfig, target: str, name: str) -> list[str]:
    """The extractor files an arm uses for one target."""
    if arm.kind == "finetune":
        return [for_target(arm.source, target, f"{name}.source")]
    if arm.kind == "best_of":
        return list(for_target(arm.sources, target, f"{name}.sources"))
    if arm.kind == "moe":
        experts = for_target(arm.experts, target, f"{name}.experts")
        return list(experts) if experts is not None else [p.name for p in _all_files(cfg)]
    return []


def _files_used(cfg: PipelineConfig, targets: list[str]) -> dict[str, set[str]]:
    """Per arm, every extractor file it uses over ``targets``, checked to exist (one line if not)."""
    folder = Path(cfg.transfer.sources.path or "")
    used = {name: {f for t in targets for f in _named(cfg, arm, t, name)} for name, arm in arm_configs(cfg).items()}
    missing = sorted({f for files in used.values() for f in files if not (folder / f).is_file()})
    if missing or (not any(used.values()) and any(a.kind != "scratch" for a in arm_configs(cfg).values())):
        raise TasksimError(f"transfer.sources: checkpoint file(s) not found in {folder}: {missing or ['*.pth.tar']}")
    return used


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


class MethodsStudy(Study):
    data = "splits"

    def check(self, cfg: PipelineConfig) -> None:
        if cfg.transfer.foundation:
            raise TasksimError("transfer.foundation models are fine-tuned by the foundation study: "
                               "transfer.studies: [foundation]")
        if cfg.transfer.sources.kind != "published":
            raise TasksimError("the methods study needs transfer.sources.kind 'published' (per-task models: "
                               "use the moe study; foundation models: the foundation study)")
        if "finetune" in cfg.transfer.methods and not cfg.transfer.recipes and not cfg.transfer.sources.finetune_from:
            raise TasksimError("transfer.sources.finetune_from: name the checkpoint the finetune method starts from")
        if cfg.transfer.tasks:  # per-target recipe fields must name every target, before any work
            _files_used(cfg, cfg.transfer.tasks)

    @classmethod
    def build_context(cls, cfg: PipelineConfig, console: Console) -> Context:
        """Split rows, graphs and the frozen features of every extractor an arm uses (cached stages),
        all in one store."""
        tc = cfg.transfer
        run = Run(cfg, console)
        tasks = stage_tasks(run)
        stage = stage_split_data(run, tasks)
        data = SplitData.load(stage, tasks, tc.standardize, tc.objective)
        used = _files_used(cfg, data.targets)
        folder = Path(tc.sources.path or "")
        trains_last = {f for name, arm in arm_configs(cfg).items() for f in used[name]
                       if (arm.moe_config(tc.moe).train_last if arm.kind == "moe" else tc.finetune.strategy == "last")}
        ensure_ray(cfg.ray)  # the model hosts compute the extractor features
        store = data.store()
        wanted = sorted({f for files in used.values() for f in files})
        frozen_features(run, stage, data, store, [(folder / f).resolve() for f in wanted],
                        {(folder / f).resolve() for f in trains_last})
        run.release_hosts()  # the cells' Ray jobs get the CPUs
        settings = CellSettings(cfg.model, tc.finetune, tc.moe, cfg.seed, tc.scratch)
        return Context(run, data, ray.put(store), settings, {})

    def arms(self, ctx: Context) -> Arms:
        """Per target, each arm's recipes: one, or (best_of) one per source labelled ``arm: source``."""
        cfg, data = ctx.run.cfg, ctx.data
        folder = Path(cfg.transfer.sources.path or "")
        short = {p.name: n for p, n in source_names(_all_files(cfg)).items()}

        def recipe(kind: str, label: str, files: list[str], arm: RecipeConfig) -> Recipe:
            paths = [folder / f for f in files]
            return Recipe(kind, label, tuple(str(p.resolve()) for p in paths), published=True,  # type: ignore[arg-type]
                          fingerprints=tuple((p.name, p.stat().st_size) for p in paths),
                          moe=arm.moe_config(cfg.transfer.moe) if arm.moe else None)

        out: Arms = {}
        for t in data.targets:
            out[t] = {}
            for name, arm in arm_configs(cfg).items():
                files = _named(cfg, arm, t, name)
                if arm.kind == "scratch":
                    out[t][name] = [SCRATCH if name == "scratch" else Recipe("scratch", name)]
                elif arm.kind == "best_of":
                    out[t][name] = [recipe("finetune", f"{name}: {short.get(f, f)}", [f], arm) for f in files]
                else:
                    out[t][name] = [recipe(arm.kind, name, files, arm)]
        return out

    def plan(self, ctx: Context) -> list[Job]:
        data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
        assert isinstance(data, SplitData)
        self.by_target = self.arms(ctx)
        return [(data.cell(t, i, s), r) for t in data.targets for i, s in enumerate(seeds)
                for rs in self.by_target[t].values() for r in rs]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        """Per task and arm: test MAE mean ± std over seeds (numpy's std, as published), SE and values;
        the improvement over the scratch arm (% of its MAE, paired by seed); a best_of arm's best
        source (and each source's own entry, ``arm: source``); gates of mixtures; the mean per-layer
        weight drift of fine-tuned cells; wins and cost per arm."""
        data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
        arms = list(next(iter(self.by_target.values())))
        scratch = next((a for a in arms if self.by_target[data.targets[0]][a][0].kind == "scratch"), None)
        out: dict[str, Any] = {"methods": arms, "seeds": seeds, "targets": {}, "cost": {}}
        for t in data.targets:
            mine = [c for c in done.cells if c["target"] == t]
            by_label = {lbl: {c["fold"]: c for c in mine if c["recipe"] == lbl} for lbl in {c["recipe"] for c in mine}}
            entry: dict[str, Any] = {"units": data.units(t), "n": mine[0]["n"]}

            def stats(label: str) -> dict[str, Any]:
                cells = by_label[label]
                maes = np.array([cells[s]["test_mae"] for s in seeds])
                st = {"mean": float(maes.mean()), "std": float(maes.std()), "seeds": len(maes),
                      "se": mean_se(maes)[1], "values": maes.tolist()}
                if scratch is not None and label != scratch:
                    base = np.array([by_label[scratch][s]["test_mae"] for s in seeds])
                    st["gain_mean"], st["gain_se"] = mean_se(100 * (base - maes) / base)
                if drift := [cells[s]["drift"] for s in seeds if "drift" in cells[s]]:
                    st["drift"] = {g: float(np.mean([d[g] for d in drift])) for g in drift[0]}
                if gates := [cells[s]["gates"] for s in seeds if "gates" in cells[s]]:
                    experts = [Path(c).name for c in self._recipe(t, label).checkpoints]
                    st["gates"] = dict(zip(experts, np.mean(gates, axis=0).round(4).tolist()))
                return st

            for arm in arms:
                recipes = self.by_target[t][arm]
                if len(recipes) == 1 and recipes[0].label == arm:
                    entry[arm] = stats(arm)
                    continue
                each = {r.label: stats(r.label) for r in recipes}
                entry |= each
                best = min(each, key=lambda lbl: each[lbl]["mean"])
                entry[arm] = each[best] | {"source": best.split(": ", 1)[1]}
            entry["best"] = min(arms, key=lambda m: entry[m]["mean"])
            out["targets"][t] = entry
        for arm in arms:
            labels = {r.label for rs in self.by_target.values() for r in rs[arm]}
            cells = [c for c in done.cells if c["recipe"] in labels]
            out["cost"][arm] = {"cells": len(cells), "epochs": float(np.mean([c["epochs_run"] for c in cells])),
                                "s_per_epoch": float(np.mean([c["seconds"] / max(c["epochs_run"], 1) for c in cells])),
                                "s_per_cell": float(np.mean([c["seconds"] for c in cells]))}
        out["wins"] = {m: sum(e["best"] == m for e in out["targets"].values()) for m in arms}
        if (rec := self._recommendation(ctx, arms, scratch, done.cells)) is not None:
            out["recommendation"] = rec
        out["cells"] = done.cells
        return out

    def _recipe(self, target: str, label: str) -> Recipe:
        return next(r for rs in self.by_target[target].values() for r in rs if r.label == label)

    def _recommendation(self, ctx: Context, arms: list[str], scratch: str | None,
                        cells: list[dict[str, Any]]) -> dict[str, Any] | None:
        """LogME as the recommender of the first best_of arm over the same three or more sources for
        every target, judged by fine-tuning from each (needs a scratch arm and three targets)."""
        targets = ctx.data.targets
        for arm in arms:
            per = [self.by_target[t][arm] for t in targets]
            same = all([r.checkpoints for r in p] == [r.checkpoints for r in per[0]] for p in per)
            if len(per[0]) >= 3 and per[0][0].kind == "finetune" and same and scratch and len(targets) >= 3:
                names = {r.label.split(": ", 1)[1]: r for r in per[0]}
                return source_recommendation(ctx, names, cells, scratch)
        return None

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        """Test MAE mean ± std over split seeds per task and arm, wins, cost, gates."""
        tc, r, figures = ctx.run.cfg.transfer, result, {}
        arms = r["methods"]
        sources = (f"foundation {', '.join(tc.foundation)}" if tc.foundation
                   else f"{tc.sources.kind} {Path(tc.sources.path or '').name}")
        md = ["## Methods (whole training split per split seed)", "",
              f"Test MAE (task units), mean ± std over split seeds {r['seeds']} ({ctx.run.cfg.data.split.kind} "
              f"splits); sources: {sources}. A best-of arm shows its best source.", "",
              "| task | units | train/val/test | " + " | ".join(arms) + " | best |",
              "|---|---|---|" + "---|" * len(arms) + "---|"]
        for t, e in r["targets"].items():
            cells = [f"{e[m]['mean']:.4g} ± {e[m]['std']:.2g}" + (f" ({e[m]['source']})" if "source" in e[m] else "")
                     for m in arms]
            md.append(f"| {t} | {e['units']} | {'/'.join(map(str, e['n']))} | " + " | ".join(cells)
                      + f" | {e['best']} |")
        md += ["", "Wins: " + ", ".join(f"{m} {n}" for m, n in r["wins"].items()), "",
               "| arm | cells | mean epochs | mean s/epoch | mean s/cell |", "|---|---|---|---|---|"]
        md += [f"| {m} | {c['cells']} | {c['epochs']:.0f} | {c['s_per_epoch']:.4f} | {c['s_per_cell']:.1f} |"
               for m, c in r["cost"].items()]
        if "recommendation" in r:
            figures |= write_recommendation(out, r["recommendation"], ctx.run.cfg.name)
            md += ["", f"Does the recommendation hold? See `recommendation.md` (calls from "
                       f"{r['recommendation']['chosen']})."]
        for arm in arms:
            gated = {t: e[arm]["gates"] for t, e in r["targets"].items() if "gates" in e[arm]}
            if not gated:
                continue
            name = "methods_gates" if arm == "moe" else f"methods_gates_{_slug(arm)}"
            experts = list(dict.fromkeys(x for g in gated.values() for x in g))
            figures[name] = out / f"{name}.png"
            plots.plot_gate_heatmap(figures[name], list(gated), experts,
                                    np.array([[g.get(x, 0.0) for x in experts] for g in gated.values()]),
                                    f"{arm}: gate weights (mean over split seeds)")
            md += ["", f"| task | {arm}: gates (mean over seeds) |", "|---|---|"]
            md += [f"| {t} | " + ", ".join(f"{k} {v:.2f}" for k, v in g.items() if v > 0) + " |"
                   for t, g in gated.items()]
        return Section([*md, ""], figures)

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        return result["targets"]  # {task: {arm (or "arm: source"): {mean, std, seeds, ...}}}
