"""The papers' tables and facts as typed data (read and validated by :mod:`.store`).

A table is stored in one orientation whatever the paper printed: rows are tasks (what a study
trains on), columns are what the paper compares on them (methods, sources, k, models). Each cell
keeps the paper's text, e.g. ``"0.0870 ± 0.0118"``, so its digits stay as printed, beside the mean
and std parsed from it. ``best`` is computed from the means, never typed. A fact is one number,
list or phrase the paper states (a threshold, a count, a subset), with the quote it comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tasksim_ray.errors import TasksimError

SOURCES = ("table", "footnote", "text", "caption", "derived")


@dataclass(frozen=True)
class Cell:
    """One printed value: ``printed`` verbatim, ``mean``/``std`` parsed from it (a percentage stays
    in percent), ``n`` seeds or folds (None where the paper does not say)."""

    printed: str
    mean: float
    std: float | None
    n: int | None
    units: str | None
    source: str
    quote: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Derived:
    """A column the paper computes from two others: the relative improvement of ``model`` over
    ``baseline``, see :func:`relative_improvement`."""

    baseline: str
    model: str
    percent: bool = True


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    ours: str | None = None  # the method name our studies use for it, where there is one
    compete: bool = True  # takes part in the per-row winner
    higher_is_better: bool | None = None
    derived: Derived | None = None
    printed_label: str | None = None  # text that starts the paper's line, where a line is this column
    note: str | None = None


@dataclass(frozen=True)
class Row:
    """A task. ``ours``: its name as the project's loaders produce it for the shared data (None when
    the data is not here); ``substitute``: the closest task that is here, used (and flagged) when
    a study has no result under ``ours``."""

    key: str
    label: str
    ours: str | None
    substitute: str | None = None
    size: int | None = None
    higher_is_better: bool | None = None
    metric: str | None = None
    footnote: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class PaperTable:
    id: str
    paper: str  # the file name under shared/papers
    title: str
    name: str  # as the paper calls it: "Table 3", "Section 3.1 (text)"
    caption: str
    metric: str
    higher_is_better: bool
    source: str
    printed_lines: str  # "rows" or "columns": which of ours is one line of the paper's table
    winner: bool  # whether a per-row winner means anything (not for a table of sizes and errors)
    study_config: str | None  # the config that reproduces it
    rows: tuple[Row, ...]
    columns: tuple[Column, ...]
    cells: Mapping[tuple[str, str], Cell | None]
    notes: tuple[str, ...] = ()
    study_note: str | None = None  # why no config reproduces it, where none does

    def row(self, key: str) -> Row:
        return next(r for r in self.rows if r.key == key)

    def column(self, key: str) -> Column:
        return next(c for c in self.columns if c.key == key)

    def cell(self, row: str, column: str) -> Cell | None:
        return self.cells[(row, column)]

    def higher_is_better_for(self, row: str, column: str | None = None) -> bool:
        col = self.column(column) if column else None
        for choice in (col.higher_is_better if col else None, self.row(row).higher_is_better):
            if choice is not None:
                return choice
        return self.higher_is_better

    def metric_for(self, row: str) -> str:
        return self.row(row).metric or self.metric

    def best(self, row: str) -> tuple[str, ...]:
        """The competing columns with the best printed mean in ``row`` (several on a tie)."""
        values = {c.key: cell.mean for c in self.columns if c.compete and (cell := self.cell(row, c.key))}
        return winners(values, self.higher_is_better_for(row))


@dataclass(frozen=True)
class Fact:
    """A number, list or phrase the paper states. ``printed``: the text as printed (inside
    ``quote``); ``value``: parsed from ``printed`` unless given; ``ours``: the value in our names
    (e.g. task names), where that differs."""

    key: str
    value: Any
    printed: str | None
    source: str
    quote: str | None
    where: str | None = None
    units: str | None = None
    out_of: int | None = None
    ours: Any = None
    note: str | None = None


@dataclass(frozen=True)
class FactSet:
    id: str
    paper: str
    title: str
    study_config: str | None
    facts: tuple[Fact, ...]

    def get(self, key: str) -> Fact:
        found = next((f for f in self.facts if f.key == key), None)
        if found is None:
            raise TasksimError(f"{self.id}: no fact '{key}'; facts: {[f.key for f in self.facts]}")
        return found


@dataclass(frozen=True)
class Paper:
    file: str
    title: str
    tables: tuple[PaperTable, ...]
    facts: FactSet | None = None
    notes: tuple[str, ...] = field(default=())


def winners(values: Mapping[str, float], higher_is_better: bool) -> tuple[str, ...]:
    """The keys with the best value (all of them on a tie); () for no values."""
    if not values:
        return ()
    top = max(values.values()) if higher_is_better else min(values.values())
    return tuple(k for k, v in values.items() if v == top)


def relative_improvement(baseline: float, model: float, higher_is_better: bool, percent: bool = True) -> float:
    """How much better ``model`` is than ``baseline``, relative to |baseline|: (baseline - model) /
    |baseline| when lower is better (an MAE), (model - baseline) / |baseline| when higher is (R²,
    ROC-AUC). Paper 003 Table 1 and paper 004 sections 3.2 and 3.5 use this definition."""
    gain = (model - baseline) if higher_is_better else (baseline - model)
    return gain / abs(baseline) * (100.0 if percent else 1.0)
