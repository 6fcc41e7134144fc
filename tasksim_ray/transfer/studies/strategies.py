"""Fine-tuning variants (strategy, unfreezing, learning-rate decay, regulariser) on chosen
(target, source) pairs: each of ``transfer.variants`` against scratch (``tasksim strategies``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.report import curve_summary, curve_table, relative_bars
from tasksim_ray.transfer.study import (
    SCRATCH,
    Context,
    Done,
    Job,
    Section,
    Study,
    check_sources,
    curve_entry,
    curve_jobs,
)


class StrategiesStudy(Study):
    def pairs(self, cfg: PipelineConfig) -> list[tuple[str, str]]:
        return [(self.target, s) for s in self.sources or []] if self.target else cfg.transfer.strategy_pairs

    def check(self, cfg: PipelineConfig) -> None:
        if not self.pairs(cfg):
            raise TasksimError("strategies: give --target and --source, or transfer.strategy_pairs in the config")

    def plan(self, ctx: Context) -> list[Job]:
        variants = ctx.run.cfg.transfer.variant_configs()
        for t, s in self.pairs(ctx.run.cfg):
            check_sources(ctx, t, [s])
        self.recipes = {(t, s): [Recipe("finetune", f"{s}: {name}", (ctx.model_dirs[s],), finetune=ft)
                                 for name, ft in variants.items()] for t, s in self.pairs(ctx.run.cfg)}
        return [j for (t, _), rs in self.recipes.items() for j in curve_jobs(ctx, t, [SCRATCH, *rs])]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        variants = ctx.run.cfg.transfer.variant_configs()
        return {"variants": {name: ft.model_dump() for name, ft in variants.items()},
                "pairs": [{"target": t, "source": s, "scratch": curve_entry(done.curves, t, "scratch"),
                           "variants": {r.label.split(": ", 1)[1]: curve_entry(done.curves, t, r.label) for r in rs}}
                          for (t, s), rs in self.recipes.items()]}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        names = list(result["variants"])
        pairs = {f"{p['source']}→{p['target']}": {"scratch": p["scratch"], **p["variants"]} for p in result["pairs"]}
        figures = {"strategy_bars": out / "strategies.png"}
        plots.plot_subset_bars(figures["strategy_bars"], list(pairs),
                               relative_bars(pairs, list(pairs), ["scratch", *names]),
                               "AUC relative to scratch (lower is better)", "Fine-tuning variants (source→target)",
                               reference=1.0)
        for p in result["pairs"]:
            key = f"curves_strategies_{p['source']}_to_{p['target']}"
            figures[key] = out / f"{key}.png"
            plots.plot_learning_curves(figures[key], f"{p['target']} from {p['source']}: fine-tuning variants",
                                       ctx.data.units(p["target"]),
                                       {"scratch": curve_summary(p["scratch"]),
                                        **{n: curve_summary(e) for n, e in p["variants"].items()}})
        return Section(["## Fine-tuning variants", "", *curve_table(pairs, ["scratch", *names], "source→target"), ""],
                       figures)
