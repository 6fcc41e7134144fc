"""Sizes, counts and fractions a config asks for that the data cannot meet: always told, never
shrunk in silence. Every stage and study reports a shortfall through :func:`report_shortfall`.

The rule, one for all keys:

* **error** when the number defines what a result means, so that a smaller one would be reported
  under a number it is not (a learning-curve size: the curve's x axis, the gain "at n = 1000" of every
  table and figure). ``defines_result=True``; raised before the first Ray task.
* **warning** naming the key, the asked and the used number when the number only caps how much data
  a step may use (``train.n_train``, ``train.n_val``, ``probe.size``, ``transfer.n_test``, pools): the
  step means the same on fewer, but the user who asked for 100,000 and got 480 hears it. A cap left
  at its default is read as "at most" and is not reported (the user asked for nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pydantic import BaseModel

from tasksim_ray.errors import TasksimError

log = logging.getLogger("tasksim_ray.sizes")


def was_set(section: BaseModel, name: str) -> bool:
    """Whether the config (or ``--set``) gave ``name`` explicitly, rather than leaving the default."""
    return name in section.model_fields_set


def report_shortfall(key: str, asked: int | float, available: int | Mapping[str, int], what: str, *,
                     defines_result: bool = False, explicit: bool = True) -> dict[str, int]:
    """Compare ``asked`` with what the data has (one count, or one per task) and report any shortfall
    by the module's rule: raise :class:`TasksimError` when ``defines_result``, else warn once in one
    line (when ``explicit``). Returns the number used for each entry (``min(asked, available)``)."""
    counts = {"": available} if isinstance(available, int) else dict(available)
    used = {name: int(min(asked, n)) for name, n in counts.items()}
    short = {name: n for name, n in counts.items() if n < asked}
    if not short:
        return used
    where = ", ".join(f"{n:,} ({name})" if name else f"{n:,}" for name, n in list(short.items())[:6])
    more = f" and {len(short) - 6} more" if len(short) > 6 else ""
    if defines_result:
        raise TasksimError(f"{key}: asks for {asked:,} {what}; the data has {where}{more}. The results are "
                           f"labelled with this number, so lower {key} to what the data holds")
    if explicit:
        log.warning("%s: asked for %s %s, the data has fewer: using %s%s", key, f"{asked:,}", what, where, more)
    return used
