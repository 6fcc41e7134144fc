"""``tasksim search CONFIG``: the best recipe for the config's targets, found by Ray Tune + Optuna."""

from __future__ import annotations

from typing import Annotated

import typer

from tasksim_ray.cli.app import PANEL_TRANSFER, ConfigArg, SetOpt, app, console, overrides, user_errors
from tasksim_ray.config import load_config


@app.command(rich_help_panel=PANEL_TRANSFER)
def search(config: ConfigArg, set_: SetOpt = None,
           resume: Annotated[bool, typer.Option(help="resume an interrupted search")] = False,
           fresh: Annotated[bool, typer.Option(help="discard a previous search of the same name")] = False) -> None:
    """Search subsets, budget splits and fine-tuning settings with Ray Tune + Optuna (ASHA)."""
    with user_errors():
        from tasksim_ray.search.engine import clear_search, run_search

        cfg = load_config(config, overrides(set_))
        if fresh:
            clear_search(cfg)
        summary = run_search(cfg, console, resume=resume)
    console.print(f"\\[search] {summary['trials']} trials ({summary['failed']} failed), {summary['epochs']} epochs; "
                  f"table {summary['table']}", highlight=False)
    if "best" in summary:
        console.print(f"Best objective {summary['best_objective']:.4f}: pretrain on "
                      f"[bold green]{', '.join(summary['best']['subset'])}[/bold green] "
                      f"({summary['best']['split'][0]} x {summary['best']['split'][1]}); "
                      f"config {summary['best_config']}")
