"""The ``tasksim`` command: one subcommand per verb, split by concern (pipeline, transfer)."""

from tasksim_ray.cli import pipeline, transfer  # noqa: F401  (importing registers the verbs)
from tasksim_ray.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
