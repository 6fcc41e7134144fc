"""Ctrl-C and SIGTERM: a run stops within seconds, at any stage, and never exits 0.

The CLI runs every verb inside :func:`handling`. The first SIGINT or SIGTERM raises
:class:`~tasksim_ray.errors.Interrupted` in the main thread, so the run unwinds the way an error
does: scratch folders are removed (``infra.cache``), Ray jobs in flight are cancelled by the job
runner, finished artifacts stay and a rerun resumes from them. The signal is also recorded, so a
library that catches the interruption and carries on (Ray Tune ends its run gracefully and returns
normally) cannot turn it into success: the verb checks :func:`received` when it ends. A second
signal, or a run still unwinding after :data:`GRACE_S`, ends the process at once.

Ray replaces the SIGTERM handler when it starts (its own ends the process with a C++ stack dump),
so :func:`reinstall` runs after ``ray.init``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from tasksim_ray.errors import Interrupted

GRACE_S = 20.0  # longest a run may take to unwind after the first signal
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, object] = {"installed": False, "received": None, "graceful": None}


def received() -> int | None:
    """The first signal received inside :func:`handling` (None if none)."""
    return _state["received"]  # type: ignore[return-value]


def handled() -> bool:
    """Whether this process handles the signals now (inside :func:`handling`)."""
    return bool(_state["installed"])


def exit_code(signum: int) -> int:
    return 128 + signum


def message(signum: int) -> str:
    name = signal.Signals(signum).name
    return (f"interrupted by {name}: stopped; finished artifacts are kept (half-written ones removed) "
            "and a rerun resumes from them")


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state["received"] is not None:  # the second signal: stop now
        sys.stderr.write(f"error: {message(signum)} (at once)\n")
        os._exit(exit_code(signum))
    _state["received"] = signum
    threading.Thread(target=_deadline, args=(signum,), daemon=True).start()
    graceful = _state["graceful"]
    if callable(graceful):  # a library that stops itself gracefully (Ray Tune) is asked to
        graceful(signum)
        return
    raise Interrupted(signum)


def _deadline(signum: int) -> None:
    """End the process if the run has not finished unwinding in time (stuck in C code, say)."""
    threading.Event().wait(GRACE_S)
    sys.stderr.write(f"error: {message(signum)} (forced after {GRACE_S:g} s)\n")
    os._exit(exit_code(signum))


@contextmanager
def handling() -> Iterator[None]:
    """Handle SIGINT and SIGTERM in this process while inside (main thread only; elsewhere a
    no-op); the handlers from before come back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _state.update(installed=True, received=None, graceful=None)
    reinstall()
    try:
        yield
    finally:
        _state.update(installed=False, graceful=None)
        for sig, handler in before.items():
            signal.signal(sig, handler)


def reinstall() -> None:
    """Take the signals back after a library replaced the handlers (``ray.init`` does)."""
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handler)


@contextmanager
def graceful(stop: Callable[[int], None]) -> Iterator[None]:
    """Inside, the first signal calls ``stop(signum)`` instead of raising (the code inside stops on
    its own and returns); leaving the block then raises the interruption."""
    _state["graceful"] = stop if _state["installed"] else None
    try:
        yield
    finally:
        _state["graceful"] = None
    raise_if_received()


def raise_if_received() -> None:
    """Raise :class:`Interrupted` if a signal arrived, even one that was caught and ignored."""
    signum = received()
    if signum is not None:
        raise Interrupted(int(signum))
