"""User-facing errors: the CLI prints their message on one line and exits non-zero."""


class TasksimError(Exception):
    """Bad input or configuration; the message names the file, row, field or key at fault."""
