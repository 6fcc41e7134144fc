"""Terminal output: a shared rich console and progress bars for long stages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Console", "task_progress"]


@contextmanager
def task_progress(console: Console, label: str, total: int) -> Iterator[Callable[[str, bool], None]]:
    """Yield ``advance(item, cached)``, which ticks a bar of ``total`` items."""
    columns = (TextColumn(f"[bold]\\[{label}][/bold]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("", total=total)

        def advance(item: str, cached: bool) -> None:
            progress.update(bar, advance=1, description=f"{item}{' (cached)' if cached else ''}")

        yield advance
