"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class TasksimError(Exception):
    """Bad input or configuration; the message names the file, row, field or key at fault."""


class TrainingDiverged(TasksimError):
    """A loss or validation score became NaN or infinite: the message names the task, the epoch and
    the setting to change. Raised by the training loop, so no diverged model is ever saved, embedded
    or compared (a Ray job, a transfer cell or a Tune trial fails with it)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived: the run unwinds (scratch folders are removed, finished artifacts
    stay) and the CLI exits 128 + the signal's number with one line. A ``KeyboardInterrupt``, so no
    ``except Exception`` swallows it and Ray's waits turn it into their own interruption."""

    def __init__(self, signum: int = 2) -> None:
        super().__init__(signum)
        self.signum = signum
