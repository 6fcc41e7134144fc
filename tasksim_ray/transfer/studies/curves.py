"""Learning curves of one target: scratch and fine-tuned from each source (``tasksim curves``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasksim_ray.config import PipelineConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.transfer.report import curve_figures, curve_table
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


class CurvesStudy(Study):
    def check(self, cfg: PipelineConfig) -> None:
        if not self.target:
            raise TasksimError("the curves study needs --target (and optionally --source, repeatable)")

    def plan(self, ctx: Context) -> list[Job]:
        target = str(self.target)
        chosen = self.sources or [s for s in ctx.data.targets if s != target] + ctx.run.cfg.transfer.foundation
        check_sources(ctx, target, chosen)
        self.recipes = [SCRATCH, *[ctx.from_task(s) for s in chosen]]
        return curve_jobs(ctx, target, self.recipes)

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        target = str(self.target)
        return {"target": target, "units": ctx.data.units(target),
                "curves": {r.label: curve_entry(done.curves, target, r.label) for r in self.recipes}}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        per_target = {result["target"]: result["curves"]}
        return Section(["## Learning curves", "", *curve_table(per_target, list(result["curves"])), ""],
                       curve_figures(out, "curves", per_target, ctx.data.units))
