"""The ``tasksim`` command: one subcommand per verb, split by concern (pipeline, transfer, search, submit)."""

from tasksim_ray.cli import crystals, pipeline, search, serve, submit, transfer  # noqa: F401  (registers the verbs)
from tasksim_ray.cli.app import app


def main() -> None:
    transfer.add_study_verbs()  # studies user code registered after this module was imported
    app()


__all__ = ["app", "main"]
