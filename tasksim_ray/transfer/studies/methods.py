"""The methods study (after Chang, Wang & Ertekin, npj Comput. Mater. 2022): per task and split
seed, on the whole training split, each of ``transfer.methods``: ``scratch`` (single-task learning),
``finetune`` (transfer from one published extractor), ``moe`` (a mixture of all of them) and, with
``sources``, fine-tuning from each published extractor in turn (which LogME then recommends). The
published extractors' frozen layers run once per task on the model hosts (cached stages), so a cell
trains only what the method trains."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.similarity.logme import logme_score
from tasksim_ray.stages import Run
from tasksim_ray.stages.data import stage_tasks
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import mean_se
from tasksim_ray.transfer.cells import CellSettings, Recipe
from tasksim_ray.transfer.data import SplitData, expert_features, stage_split_data
from tasksim_ray.transfer.recommend import recommend_report
from tasksim_ray.transfer.report import write_recommendation
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section, Study


def source_names(checkpoints: list[Path]) -> dict[Path, str]:
    """Published checkpoints' names as sources: file names without the extension and without the
    '_'-separated words every one of them starts or ends with (``singletask_``, ``_best_model``)."""
    words = [p.name.removesuffix(".pth.tar").split("_") for p in checkpoints]
    head = tail = 0
    while len(words) > 1 and all(len(w) > head + tail + 1 and w[head] == words[0][head] for w in words):
        head += 1
    while len(words) > 1 and all(len(w) > head + tail + 1 and w[-1 - tail] == words[0][-1 - tail] for w in words):
        tail += 1
    return {p: "_".join(w[head:len(w) - tail]) for p, w in zip(checkpoints, words)}


def _published_files(cfg: PipelineConfig) -> tuple[list[Path], Path | None]:
    """(the MoE's extractor files, the one fine-tuning starts from), checked before any work."""
    src = cfg.transfer.sources
    folder = Path(src.path or "")
    names = src.names or sorted(p.name for p in folder.glob("*.pth.tar"))
    tl = folder / src.finetune_from if src.finetune_from else None
    if "finetune" in cfg.transfer.methods and tl is None:
        raise TasksimError("transfer.sources.finetune_from: name the checkpoint the finetune method starts from")
    missing = [str(p) for p in [folder / n for n in names] + ([tl] if tl else []) if not p.is_file()]
    if missing or not names:
        raise TasksimError(f"transfer.sources: checkpoint file(s) not found: {missing or [str(folder / '*.pth.tar')]}")
    return [folder / n for n in names], tl


def _frozen_features(run: Run, stage: Any, data: SplitData, store: dict[str, torch.Tensor], extractors: list[Path],
                     trained_last: set[Path]) -> None:
    """Each extractor's frozen features of every task's graphs into the store: ``feat/<name>`` (pooled,
    per graph) and, for extractors whose last layer trains, ``h_in/<name>`` (atoms entering it)."""
    n_atoms = int(store["atom_ptr"][-1])
    ap = store["atom_ptr"]
    feat = {p: torch.zeros(len(data.store_rows), 0) for p in extractors}
    h_in = {p: torch.zeros(n_atoms, 0) for p in trained_last}
    for t in data.targets:
        pos = data.positions(t)
        rows = torch.cat([torch.arange(int(ap[i]), int(ap[i + 1])) for i in pos])
        for p, f in expert_features(run, stage, t, pos, extractors, trained_last).items():
            if not feat[p].shape[1]:
                feat[p] = torch.zeros(len(data.store_rows), f["pooled"].shape[1])
            feat[p][pos] = f["pooled"]
            if p in trained_last:
                if not h_in[p].shape[1]:
                    h_in[p] = torch.zeros(n_atoms, f["h_in"].shape[1])
                h_in[p][rows] = f["h_in"]
    for p in extractors:
        store[f"feat/{p.name}"] = feat[p]
        if p in trained_last:
            store[f"h_in/{p.name}"] = h_in[p]


class MethodsStudy(Study):
    data = "splits"

    def check(self, cfg: PipelineConfig) -> None:
        if cfg.transfer.foundation:
            raise TasksimError("transfer.foundation models are fine-tuned by the foundation study: "
                               "transfer.studies: [foundation]")
        if cfg.transfer.sources.kind != "published":
            raise TasksimError("the methods study needs transfer.sources.kind 'published' (per-task models: "
                               "use the moe study; foundation models: the foundation study)")
        _published_files(cfg)

    @classmethod
    def build_context(cls, cfg: PipelineConfig, console: Console) -> Context:
        """Split rows, graphs and each published extractor's frozen features per task (cached stages),
        all in one store."""
        experts, tl = _published_files(cfg)
        tc = cfg.transfer
        run = Run(cfg, console)
        tasks = stage_tasks(run)
        ensure_ray(cfg.ray)  # the model hosts compute the extractor features
        stage = stage_split_data(run, tasks)
        data = SplitData.load(stage, tasks, tc.standardize)
        store = data.store()
        each = "sources" in tc.methods
        wanted = (experts if "moe" in tc.methods or each else []) + ([tl] if tl and "finetune" in tc.methods else [])
        trained_last = {p.resolve() for p in wanted if (p in experts and tc.moe.train_last)
                        or (p == tl and tc.finetune.strategy == "last") or (each and tc.finetune.strategy == "last")}
        _frozen_features(run, stage, data, store, [p.resolve() for p in dict.fromkeys(wanted)], trained_last)
        run.release_hosts()  # the cells' Ray jobs get the CPUs
        settings = CellSettings(cfg.model, tc.finetune, tc.moe, cfg.seed, tc.scratch)
        return Context(run, data, ray.put(store), settings, {})

    def recipes(self, ctx: Context) -> dict[str, Recipe]:
        """One recipe per method (and, with ``sources``, one per published source, labelled by its name)."""
        tc = ctx.run.cfg.transfer
        experts, tl = _published_files(ctx.run.cfg)
        prints = lambda paths: tuple((p.name, p.stat().st_size) for p in paths)  # noqa: E731
        recipes = {"scratch": SCRATCH,
                   "finetune": Recipe("finetune", "finetune", (str(tl.resolve()),) if tl else (), published=True,
                                      fingerprints=prints([tl]) if tl else ()),
                   "moe": Recipe("moe", "moe", tuple(str(p.resolve()) for p in experts), published=True,
                                 fingerprints=prints(experts))}
        each = "sources" in tc.methods
        if each:
            recipes |= {f"from {name}": Recipe("finetune", f"from {name}", (str(p.resolve()),), published=True,
                                               fingerprints=prints([p])) for p, name in source_names(experts).items()}
        return {m: r for m, r in recipes.items() if m in tc.methods or (each and m.startswith("from "))}

    def plan(self, ctx: Context) -> list[Job]:
        data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
        assert isinstance(data, SplitData)
        self.methods = self.recipes(ctx)
        return [(data.cell(t, i, s), r) for t in data.targets for i, s in enumerate(seeds)
                for r in self.methods.values()]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        """Test MAE mean ± std over seeds (numpy's std, as published) and SE, the improvement over
        scratch (% of its MAE, paired by seed), wins, mean gates, the mean per-layer weight drift of
        fine-tuned cells, and cost per method."""
        data, seeds, recipes, cells = ctx.data, ctx.run.cfg.data.split.seeds, self.methods, done.cells
        out: dict[str, Any] = {"methods": list(recipes), "seeds": seeds, "targets": {}, "cost": {}}
        experts = list(recipes["moe"].checkpoints) if "moe" in recipes else []
        for t in data.targets:
            mine = [c for c in cells if c["target"] == t]
            entry: dict[str, Any] = {"units": data.units(t), "n": mine[0]["n"]}
            by_seed = {m: {c["fold"]: c for c in mine if c["recipe"] == m} for m in recipes}
            for m in recipes:
                maes = np.array([by_seed[m][s]["test_mae"] for s in seeds])
                entry[m] = {"mean": float(maes.mean()), "std": float(maes.std()), "seeds": len(maes),
                            "se": mean_se(maes)[1], "values": maes.tolist()}
                if "scratch" in recipes and m != "scratch":
                    base = np.array([by_seed["scratch"][s]["test_mae"] for s in seeds])
                    entry[m]["gain_mean"], entry[m]["gain_se"] = mean_se(100 * (base - maes) / base)
                drift = [by_seed[m][s]["drift"] for s in seeds if "drift" in by_seed[m][s]]
                if drift:
                    entry[m]["drift"] = {g: float(np.mean([d[g] for d in drift])) for g in drift[0]}
            entry["best"] = min(recipes, key=lambda m: entry[m]["mean"])
            if experts:
                gates = np.mean([c["gates"] for c in mine if c["recipe"] == "moe"], axis=0)
                entry["gates"] = dict(zip([Path(e).name for e in experts], gates.round(4).tolist()))
            out["targets"][t] = entry
        for m in recipes:
            mine = [c for c in cells if c["recipe"] == m]
            out["cost"][m] = {"cells": len(mine), "epochs": float(np.mean([c["epochs_run"] for c in mine])),
                              "s_per_epoch": float(np.mean([c["seconds"] / max(c["epochs_run"], 1) for c in mine])),
                              "s_per_cell": float(np.mean([c["seconds"] for c in mine]))}
        out["wins"] = {m: sum(e["best"] == m for e in out["targets"].values()) for m in recipes}
        per_source = {m.removeprefix("from "): r for m, r in recipes.items() if m.startswith("from ")}
        if len(per_source) >= 3 and "scratch" in recipes and len(data.targets) >= 3:
            out["recommendation"] = source_recommendation(ctx, per_source, cells)
        out["cells"] = cells
        return out

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        """Test MAE mean ± std over split seeds per task and method, wins, cost, gates."""
        tc, r, figures = ctx.run.cfg.transfer, result, {}
        each = [m for m in r["methods"] if m.startswith("from ")]  # one column for all per-source fine-tuning
        methods = [m for m in r["methods"] if m not in each]
        sources = (f"foundation {', '.join(tc.foundation)}" if tc.foundation
                   else f"{tc.sources.kind} {Path(tc.sources.path or '').name}")
        moe = (f"; MoE top-{tc.moe.k}, penalty {tc.moe.penalty} on {tc.moe.penalty_on}, expert last layer "
               f"{'trainable' if tc.moe.train_last else 'frozen'}" if "moe" in tc.methods else "")
        md = ["## Methods (whole training split per split seed)", "",
              f"Test MAE (task units), mean ± std over split seeds {r['seeds']} ({ctx.run.cfg.data.split.kind} "
              f"splits); sources: {sources}{moe}.", "",
              "| task | units | train/val/test | " + " | ".join(methods + (["best single source"] if each else []))
              + " | best |", "|---|---|---|" + "---|" * (len(methods) + bool(each)) + "---|"]
        for t, e in r["targets"].items():
            cells = [f"{e[m]['mean']:.4g} ± {e[m]['std']:.2g}" for m in methods]
            if each:
                top = min(each, key=lambda m: e[m]["mean"])
                cells.append(f"{top.removeprefix('from ')}: {e[top]['mean']:.4g} ± {e[top]['std']:.2g}")
            md.append(f"| {t} | {e['units']} | {'/'.join(map(str, e['n']))} | " + " | ".join(cells)
                      + f" | {e['best']} |")
        md += ["", "Wins: " + ", ".join(f"{m} {n}" for m, n in r["wins"].items() if n or m in methods), "",
               "| method | cells | mean epochs | mean s/epoch | mean s/cell |", "|---|---|---|---|---|"]
        md += [f"| {m} | {c['cells']} | {c['epochs']:.0f} | {c['s_per_epoch']:.4f} | {c['s_per_cell']:.1f} |"
               for m, c in r["cost"].items() if m in methods]
        if each:
            cost = [r["cost"][m] for m in each]
            md.append(f"| each source ({len(each)}) | {sum(c['cells'] for c in cost)} | "
                      f"{np.mean([c['epochs'] for c in cost]):.0f} | {np.mean([c['s_per_epoch'] for c in cost]):.4f} | "
                      f"{np.mean([c['s_per_cell'] for c in cost]):.1f} |")
        if "recommendation" in r:
            figures |= write_recommendation(out, r["recommendation"], ctx.run.cfg.name)
            md += ["", f"Does the recommendation hold? See `recommendation.md` (calls from "
                       f"{r['recommendation']['chosen']})."]
        gated = {t: e["gates"] for t, e in r["targets"].items() if "gates" in e}
        if gated:
            experts = list(next(iter(gated.values())))
            figures["methods_gates"] = out / "methods_gates.png"
            plots.plot_gate_heatmap(figures["methods_gates"], list(gated), experts,
                                    np.array([[g[x] for x in experts] for g in gated.values()]),
                                    "MoE gate weights (mean over split seeds)")
            md += ["", "| task | gates (mean over seeds) |", "|---|---|"]
            md += [f"| {t} | " + ", ".join(f"{k} {v:.2f}" for k, v in g.items() if v > 0) + " |"
                   for t, g in gated.items()]
        return Section([*md, ""], figures)

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        return result["targets"]  # {task: {method: {mean, std, seeds, ...}}}


def source_recommendation(ctx: Context, sources: dict[str, Recipe], cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Each published source as a recommendation for each task, judged against fine-tuning from it:
    gain = test MAE improvement over scratch (% of scratch) per split seed; the score is LogME of the
    source's frozen features on the target's own training labels (what a user has before training)."""
    data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
    assert isinstance(data, SplitData)
    mae = {(c["target"], c["recipe"], c["fold"]): c["test_mae"] for c in cells}
    store = ray.get(ctx.store_ref)
    start = time.perf_counter()
    scores: dict[str, dict[str, float]] = {}
    for t in data.targets:
        train = [data.cell(t, i, s) for i, s in enumerate(seeds)]
        scores[t] = {name: float(np.mean([logme_score(store[f"feat/{Path(r.checkpoints[0]).name}"][c.train_pos].numpy(),
                                                      c.y_train) for c in train])) for name, r in sources.items()}
    seconds = time.perf_counter() - start
    def gain(t: str, name: str, s: int) -> float:
        return 100 * (mae[(t, "scratch", s)] - mae[(t, f"from {name}", s)]) / mae[(t, "scratch", s)]

    per_fold = {t: {name: np.array([gain(t, name, s) for s in seeds]) for name in sources} for t in data.targets}
    rec = recommend_report({"logme": scores}, per_fold, {}, dict.fromkeys(sources, float("nan")), ctx.run.cfg.seed)
    rec["gain"] = "test MAE improvement over scratch, % of scratch MAE, mean over split seeds"
    mine = [c for c in cells if c["recipe"].startswith("from ")]
    rec["cost"] = {"similarity_s": seconds, "transfer_matrix_s": float(sum(c["seconds"] for c in mine)),
                   "transfer_matrix_cells": len(mine), "task_models_s": 0.0}
    return rec
