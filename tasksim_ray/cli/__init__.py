"""The ``tasksim`` command: one subcommand per verb, split by concern (pipeline, transfer, search, submit).

Importing a module registers its verbs; ``--help`` lists them in this order within each panel."""

from tasksim_ray.cli import pipeline, serve, submit  # noqa: F401, I001  (run, demo, serve, submit first)
from tasksim_ray.cli import transfer, crystals, search, publish  # noqa: F401, I001
from tasksim_ray.cli.app import app


def main() -> None:
    transfer.add_study_verbs()  # studies user code registered after this module was imported
    app()


__all__ = ["app", "main"]
