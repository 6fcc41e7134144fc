"""``tasksim crystal-moe``: an alias of ``tasksim study`` kept for the published MoE study's configs."""

from __future__ import annotations

from tasksim_ray.cli.app import PANEL_STUDIES, ConfigArg, SetOpt, app
from tasksim_ray.cli.transfer import study


@app.command(name="crystal-moe", rich_help_panel=PANEL_STUDIES)
def crystal_moe(config: ConfigArg, set_: SetOpt = None) -> None:
    """Alias of ``tasksim study CONFIG`` (the configs/crystal_moe_*.yaml run the methods study)."""
    study(config, set_)
