"""``tasksim publish``: a run's report as a ``results/<study>/`` page, generated from the run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasksim_ray.cli.app import PANEL_STAGES, app, console, user_errors

ReportArg = Annotated[Path, typer.Argument(help="a run's report folder: WORKDIR/report or WORKDIR/report/transfer",
                                           metavar="REPORT")]
DestArg = Annotated[Path, typer.Argument(help="the results page's folder, e.g. results/crystal_moe", metavar="DEST")]
NotesOpt = Annotated[Path | None, typer.Option(help="Markdown placed under the title: what the run reduced from the "
                                                    "paper's setting, where it disagrees with the paper")]


@app.command(rich_help_panel=PANEL_STAGES)
def publish(report: ReportArg, dest: DestArg, title: Annotated[str, typer.Option(help="the page's title")] = "Results",
            notes: NotesOpt = None) -> None:
    """Copy a run's report (tables, JSON without per-cell records, figures, run record and resolved
    config) to DEST and write DEST/README.md from them: date, commit, command, machine, config, notes."""
    with user_errors():
        from tasksim_ray.infra.provenance import publish_report

        out = publish_report(report, dest, title, notes)
    console.print(f"Published {report} -> {out}")


@app.command(rich_help_panel=PANEL_STAGES)
def recompare(page: Annotated[Path, typer.Argument(help="a results page written by `tasksim publish`",
                                                   metavar="PAGE")]) -> None:
    """Recompute a published page's beside-the-paper tables and verdicts from its stored results by
    today's rule (no cell reruns), regenerate its README and record the recomputation in run.json."""
    with user_errors():
        from tasksim_ray.transfer.recompare import recompare_page

        written = recompare_page(page)
    console.print(f"Recompared {page}: {', '.join(p.name for p in written)}")
