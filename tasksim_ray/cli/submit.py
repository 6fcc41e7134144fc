"""``tasksim submit CONFIG --address URL``: run a verb as a Ray job on a cluster and follow it."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from tasksim_ray.cli.app import ConfigArg, app, console, fail
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.submit import JOB_VERBS
from tasksim_ray.infra.submit import submit as submit_job


@app.command()
def submit(config: ConfigArg,
           address: Annotated[str | None, typer.Option(help="job server, e.g. http://HEAD:8265 "
                                                           "(default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")] = None,
           job: Annotated[str, typer.Option(help=", ".join(JOB_VERBS))] = "run_pipeline",
           pip: Annotated[list[str] | None, typer.Option(help="extra pip packages for the job (repeatable)")] = None,
           image: Annotated[str | None, typer.Option(help="container image for the job")] = None,
           arg: Annotated[list[str] | None, typer.Option(help="argument passed on to the job (repeatable)")] = None,
           ) -> None:
    """Submit jobs/<JOB>.py CONFIG to a Ray cluster, stream its logs, exit with its outcome."""
    url = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    try:
        if not url:
            raise TasksimError("no job server: give --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
        outcome = submit_job(url, job, str(config), arg, pip=pip, image=image,
                             on_log=lambda text: sys.stdout.write(text))
    except TasksimError as exc:
        fail(exc)
    style = "green" if outcome.succeeded else "red"
    console.print(f"[{style}]job {outcome.job_id}: {outcome.status}[/{style}]")
    raise typer.Exit(0 if outcome.succeeded else 1)
