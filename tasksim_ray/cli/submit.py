"""``tasksim submit CONFIG --address URL``: run a verb as a Ray job on a cluster and follow it."""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Annotated

import typer

from tasksim_ray.cli.app import ConfigArg, app, console, user_errors
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.submit import ALLOWED, JOB_VERBS
from tasksim_ray.infra.submit import submit as submit_job


def _print_upload(files: list[str]) -> None:
    """What leaves this machine: a count per allowed folder, and each file outside them by name."""
    folders = Counter(f.split("/", 1)[0] for f in files if "/" in f and f.split("/", 1)[0] in ALLOWED)
    single = [f for f in files if f.split("/", 1)[0] not in folders]
    parts = [f"{name}/ ({n} files)" for name, n in sorted(folders.items())] + single
    console.print(f"uploading {len(files)} files: {', '.join(parts)}")


@app.command()
def submit(config: ConfigArg,
           address: Annotated[str | None, typer.Option(help="job server, e.g. http://HEAD:8265 "
                                                           "(default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")] = None,
           job: Annotated[str, typer.Option(help="the job script: " + ", ".join(JOB_VERBS))] = "run_pipeline",
           pip: Annotated[list[str] | None, typer.Option(help="extra pip packages for the job (repeatable)")] = None,
           image: Annotated[str | None, typer.Option(help="container image for the job")] = None,
           arg: Annotated[list[str] | None, typer.Option(help="argument passed on to the job (repeatable)")] = None,
           ) -> None:
    """Submit `jobs/JOB.py CONFIG` to a Ray cluster, stream its logs, exit with its outcome.

    Run it from the project folder: the package, jobs/, configs/, the config and the data files it
    names travel."""
    url = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    with user_errors():
        if not url:
            raise TasksimError("no job server: give --address http://HEAD:8265 (or set RAY_API_SERVER_ADDRESS)")
        outcome = submit_job(url, job, str(config), arg, pip=pip, image=image,
                             on_log=lambda text: sys.stdout.write(text), on_upload=_print_upload)
    style = "green" if outcome.succeeded else "red"
    console.print(f"[{style}]job {outcome.job_id}: {outcome.status}[/{style}]")
    raise typer.Exit(0 if outcome.succeeded else 1)
