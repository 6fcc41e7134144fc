"""Crystal verbs: the mixture-of-experts study on the small materials tasks (Chang et al. 2022)."""

from __future__ import annotations

from tasksim_ray.cli.app import ConfigArg, SetOpt, app, console, fail, overrides
from tasksim_ray.config import load_config
from tasksim_ray.errors import TasksimError


@app.command(name="crystal-moe")
def crystal_moe(config: ConfigArg, set_: SetOpt = None) -> None:
    """STL vs TL vs MoE over the published CGCNN extractors, per task and split seed (crystal_moe section);
    writes <workdir>/report/crystal_moe/."""
    try:
        from tasksim_ray.infra.runtime import ensure_ray
        from tasksim_ray.transfer.crystal_moe import run_study
        from tasksim_ray.transfer.crystal_moe_report import write_report

        cfg = load_config(config, overrides(set_))
        ensure_ray(cfg.ray)
        results = run_study(cfg, console)
        paths = write_report(results, cfg.crystal_moe, cfg.workdir_path / "report" / "crystal_moe")
    except TasksimError as exc:
        fail(exc)
    console.print(paths["markdown"].read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"Crystal MoE report: {paths['markdown'].parent}/")
