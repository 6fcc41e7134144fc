"""Terminal output: a shared rich console, and progress for long stages that a log can show too.

On a terminal a stage draws a live bar. When the output is a file or a pipe (a batch job, ``make
demo > log``) a bar would print nothing until the stage ends, so instead each finished item prints
one line with the count, the time so far and an ETA:
``[pretrain] 3/10 mu done (1 cached) 1m02s, ETA 2m25s``; and when nothing finishes for a minute, a
line says the stage is still running, so a log is never silent for minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["Console", "duration", "task_progress"]


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a log line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class LineProgress:
    """``advance(item, cached)`` as one log line per item that ran, plus a "still running" line after
    ``quiet_s`` without one. Cached items are counted, not listed (a resumed study may skip
    hundreds); the ETA is the time per item that ran so far times the items left, so it already
    reflects how many run in parallel."""

    def __init__(self, console: Console, label: str, total: int, quiet_s: float = 60.0) -> None:
        self.console, self.label, self.total, self.quiet_s = console, label, total, quiet_s
        self.start = self.last = time.monotonic()
        self.done = self.cached = 0
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"progress-{label}", daemon=True)
        self._heartbeat.start()

    def _print(self, text: str) -> None:
        self.last = time.monotonic()
        self.console.print(f"[{self.label}] {text}", markup=False, highlight=False, soft_wrap=True)

    def _beat(self) -> None:
        while not self._stop.wait(min(self.quiet_s, 5.0)):
            if time.monotonic() - self.last >= self.quiet_s:
                self._print(f"{self.done}/{self.total} done, still running {duration(time.monotonic() - self.start)}")

    def advance(self, item: str, cached: bool) -> None:
        self.done += 1
        if cached:
            self.cached += 1
            return
        elapsed = time.monotonic() - self.start
        left = self.total - self.done
        eta = f", ETA {duration(elapsed / (self.done - self.cached) * left)}" if left else ""
        note = f" ({self.cached} cached)" if self.cached else ""
        self._print(f"{self.done}/{self.total} {item} done{note} {duration(elapsed)}{eta}")

    def close(self) -> None:
        self._stop.set()
        self._heartbeat.join()
        if self.cached and self.cached == self.done:
            self._print(f"{self.done}/{self.total} cached")


@contextmanager
def task_progress(console: Console, label: str, total: int) -> Iterator[Callable[[str, bool], None]]:
    """Yield ``advance(item, cached)``: a bar of ``total`` items on a terminal, else a line per item."""
    if not console.is_interactive:
        lines = LineProgress(console, label, total)
        try:
            yield lines.advance
        finally:
            lines.close()
        return
    columns = (TextColumn(f"[bold]\\[{label}][/bold]"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("", total=total)

        def advance(item: str, cached: bool) -> None:
            progress.update(bar, advance=1, description=f"{item}{' (cached)' if cached else ''}")

        yield advance
