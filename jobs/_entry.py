"""Shared by the job entry points: run one `tasksim` verb with the job's arguments."""

import sys

from tasksim_ray.cli import app


def run(*verb: str) -> None:
    app([*verb, *sys.argv[1:]])
