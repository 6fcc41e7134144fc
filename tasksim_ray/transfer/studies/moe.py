"""The mixture-of-experts study on the pipeline's own tasks: per target, a mixture of the other
tasks' models with top-k gating, against scratch, on learning curves (``tasksim moe``). The MoE
study over published extractors and split seeds is the ``methods`` study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.config import PipelineConfig
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.report import curve_figures, curve_table
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section, Study, curve_entry, curve_jobs


class MoEStudy(Study):
    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return cfg.transfer.moe.init == "similarity"  # the gate starts from the similarity row

    def plan(self, ctx: Context) -> list[Job]:
        sources, init = ctx.data.sources, ctx.run.cfg.transfer.moe.init
        self.recipes: dict[str, tuple[list[str], Recipe]] = {}
        for t in ctx.data.targets:
            experts = [s for s in sources if s != t]
            theta = ctx.similarity.row(t, experts) if init == "similarity" and ctx.similarity else None
            self.recipes[t] = (experts, Recipe("moe", "moe", tuple(ctx.model_dirs[s] for s in experts), theta))
        return [j for t, (_, r) in self.recipes.items() for j in curve_jobs(ctx, t, [SCRATCH, r])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        sources, moe, largest = ctx.data.sources, ctx.run.cfg.transfer.moe, ctx.run.cfg.transfer.sizes[-1]
        gates = np.zeros((len(self.recipes), len(sources)))
        out: dict[str, Any] = {"experts": sources, "k": moe.k, "init": moe.init, "targets": {}}
        for i, (t, (experts, _)) in enumerate(self.recipes.items()):
            cells = [c for c in done.curves[(t, "moe")]["cells"] if c["size"] == largest]
            mean_gate = np.mean([c["gates"] for c in cells], axis=0)
            gates[i, [sources.index(e) for e in experts]] = mean_gate
            out["targets"][t] = {"scratch": curve_entry(done.curves, t, "scratch"),
                                 "moe": curve_entry(done.curves, t, "moe"),
                                 "gates": dict(zip(experts, mean_gate.round(4).tolist()))}
        out["gate_matrix"] = gates.tolist()
        return out

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        figures = {"moe_gates": out / "moe_gates.png"}
        plots.plot_gate_heatmap(figures["moe_gates"], list(result["targets"]), result["experts"],
                                np.array(result["gate_matrix"]),
                                f"MoE gate weights (top-{result['k']}, init {result['init']}, largest training size)")
        figures |= curve_figures(out, "moe", {t: {k: v for k, v in e.items() if k != "gates"}
                                              for t, e in result["targets"].items()}, ctx.data.units)
        md = ["## Mixture of experts", "", *curve_table(result["targets"], ["scratch", "moe"]), "",
              "| target | gates (largest size, mean over folds) |", "|---|---|"]
        md += [f"| {t} | " + ", ".join(f"{k} {v:.2f}" for k, v in e["gates"].items() if v > 0) + " |"
               for t, e in result["targets"].items()]
        return Section([*md, ""], figures)
