"""The ``tasksim`` Typer app and what every verb shares: config arguments, overrides, errors."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.markup import escape

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra import interrupts
from tasksim_ray.infra.progress import Console

# Help texts are Markdown (backticks render as code, `[x]` stays text); avoid `<...>`, which Markdown drops.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Which tasks to pretrain on: task similarity from per-task models, on Ray.")

# The help panels of `tasksim --help`: run, demo, serve and submit in Typer's default panel first, then these.
PANEL_STAGES = "Pipeline stages"
PANEL_STUDIES = "Studies"
PANEL_TRANSFER = "Fine-tuning and search"
console = Console()
if not console.is_terminal:  # a log file or a pipe: wide enough for a 10-task similarity table
    console.width = 120
err_console = Console(stderr=True)


class _WarningLines(logging.Handler):
    """The library's warnings (a size the data cannot meet, a repeated id) as one yellow line each on
    stderr, printed through the console at emit time (so a captured stderr sees them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {escape(record.getMessage())}", highlight=False,
                          soft_wrap=True)


_library_log = logging.getLogger("tasksim_ray")
if not any(isinstance(h, _WarningLines) for h in _library_log.handlers):
    _library_log.addHandler(_WarningLines(logging.WARNING))

ConfigArg = Annotated[Path, typer.Argument(help="YAML experiment config", metavar="CONFIG")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                                  help="override a key: --set train.max_epochs=5 (repeatable)")]


def overrides(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TasksimError(f"--set expects KEY=VALUE, got '{pair}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TasksimError(f"--set {key.strip()}: value '{value}' is not valid YAML") from None
    return out


@contextmanager
def user_errors() -> Iterator[None]:
    """The CLI's promise: bad input, and a disk that is full or a path that is not writable, end the
    command with one line naming the file and exit status 2; Ctrl-C or SIGTERM end it within
    seconds with one line and 128 + the signal's number, never 0 (``infra.interrupts``)."""
    with interrupts.handling():
        try:
            yield
            interrupts.raise_if_received()  # caught and ignored on the way (Ray Tune does): still a stop
        except KeyboardInterrupt:
            stopped(interrupts.received() or signal.SIGINT)
        except TasksimError as exc:
            if interrupts.received():  # an error the unwinding caused (a cancelled Ray job)
                stopped(interrupts.received())
            fail(exc)
        except OSError as exc:
            if interrupts.received():
                stopped(interrupts.received())
            fail(TasksimError(os_error_line(exc)))
        except Exception:
            if interrupts.received():  # whatever else the unwinding raised (a Ray worker the signal also ended)
                stopped(interrupts.received())
            raise


def os_error_line(exc: OSError) -> str:
    """``path: reason`` for an OS error (a full disk, a folder that is not writable)."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def fail(exc: TasksimError) -> NoReturn:
    """A user error: one red line on stderr and exit status 2."""
    err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(2) from None


def stopped(signum: int) -> NoReturn:
    """An interrupted run: one line on stderr and exit status 128 + the signal's number."""
    err_console.print(f"[red]error:[/red] {interrupts.message(signum)}", highlight=False, soft_wrap=True)
    raise typer.Exit(interrupts.exit_code(signum)) from None
