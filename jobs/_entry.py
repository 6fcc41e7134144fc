"""Shared by the job entry points: run one `tasksim` verb with the job's arguments.

The log's first line says which interpreter runs the job, before anything is imported: a node whose
python lacks the project's packages then fails with that line above the ModuleNotFoundError."""

import sys

print(f"tasksim job: {sys.executable} (Python {sys.version.split()[0]})", flush=True)

from tasksim_ray.cli import app  # noqa: E402


def run(*verb: str) -> None:
    app([*verb, *sys.argv[1:]])
