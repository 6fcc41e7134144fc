"""Reading ``papers/tables/*.yaml`` into :mod:`.schema` types, validated, and the lazy registry of
ids. Every problem is a one-line :class:`TasksimError` naming the file and the key path."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tasksim_ray.errors import TasksimError
from tasksim_ray.papers.schema import SOURCES, Cell, Column, Derived, Fact, FactSet, Paper, PaperTable, Row

_NUMBER = r"[-+]?\d[\d,]*(?:\.\d*)?(?:[eE][-+]?\d+)?"
_CELL = re.compile(rf"^(?P<mean>{_NUMBER})(?:\s*±\s*(?P<std>{_NUMBER}))?\s*(?P<pct>%)?$")
_INHERIT = object()  # a units key that is absent (inherit) rather than null (the paper prints none)
_REQUIRED = object()


def parse_number(text: str) -> float:
    return float(text.replace(",", ""))


class _Reader:
    """Typed access to one YAML mapping, each error naming the file and the key path."""

    def __init__(self, file: str, key: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise TasksimError(f"{file}: {key}: expected a mapping, got {type(data).__name__}")
        self.file, self.key, self.data = file, key, data

    def fail(self, name: str, problem: str) -> TasksimError:
        return TasksimError(f"{self.file}: {self.key}.{name}: {problem}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _REQUIRED) -> Any:
        if name not in self.data:
            if default is _REQUIRED:
                raise self.fail(name, "missing")
            return default
        value = self.data[name]
        if value is not None and not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind):
            names = "/".join(k.__name__ for k in _kinds(kind))
            raise self.fail(name, f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def child(self, name: str, data: Any) -> _Reader:
        return _Reader(self.file, f"{self.key}.{name}", data)

    def unknown(self, allowed: set[str]) -> None:
        extra = sorted(set(self.data) - allowed)
        if extra:
            raise self.fail(extra[0], f"unknown key; allowed: {sorted(allowed)}")


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def parse_cell(printed: str, where: str) -> tuple[float, float | None]:
    match = _CELL.match(printed.strip())
    if not match:
        raise TasksimError(f"{where}: {printed!r} is not 'mean', 'mean ± std' or 'x%'")
    std = match["std"]
    return parse_number(match["mean"]), parse_number(std) if std else None


_COLUMN_KEYS = {"key", "label", "ours", "compete", "higher_is_better", "derived", "printed_label", "note", "units", "n"}
_ROW_KEYS = {"key", "label", "ours", "substitute", "size", "higher_is_better", "metric", "footnote", "note", "units",
             "cells"}
_CELL_KEYS = {"printed", "source", "quote", "note", "n", "units"}
_TABLE_KEYS = {"id", "name", "caption", "metric", "higher_is_better", "source", "printed_lines", "winner", "units",
               "n", "study_config", "study_note", "columns", "rows", "notes"}


def _column(r: _Reader) -> tuple[Column, Any, int | None]:
    r.unknown(_COLUMN_KEYS)
    derived = None
    if (spec := r.get("derived", dict, None)) is not None:
        d = r.child("derived", spec)
        d.unknown({"kind", "baseline", "model", "percent"})
        if d.get("kind", str) != "relative_improvement":
            raise d.fail("kind", "only 'relative_improvement' is known")
        derived = Derived(d.get("baseline", str), d.get("model", str), d.get("percent", bool, True))
    col = Column(r.get("key", str), r.get("label", str), r.get("ours", str, None), r.get("compete", bool, True),
                 r.get("higher_is_better", bool, None), derived, r.get("printed_label", str, None),
                 r.get("note", str, None))
    return col, r.get("units", str, _INHERIT), r.get("n", int, None)


def _cells(r: _Reader, row_key: str, spec: Any, columns: list[tuple[Column, Any, int | None]],
           defaults: tuple[Any, Any, int | None, str]) -> dict[tuple[str, str], Cell | None]:
    """A row's cells: exactly one entry per column, each a printed string, null (the paper has no
    value there) or a mapping with ``printed`` and its own source, quote or note."""
    cells = r.child("cells", spec)
    keys = [c.key for c, _, _ in columns]
    missing = [k for k in keys if k not in spec]
    if missing:
        raise cells.fail(missing[0], "missing (write null where the paper has no value)")
    cells.unknown(set(keys))
    table_units, row_units, table_n, table_source = defaults
    out: dict[tuple[str, str], Cell | None] = {}
    for col, col_units, col_n in columns:
        raw = spec[col.key]
        if raw is None:
            out[(row_key, col.key)] = None
            continue
        c = cells.child(col.key, raw if isinstance(raw, dict) else {"printed": raw})
        c.unknown(_CELL_KEYS)
        printed = c.get("printed", str)  # a string, so its digits stay as printed
        mean, std = parse_cell(printed, f"{c.file}: {c.key}")
        units = next(u for u in (c.get("units", str, _INHERIT), col_units, row_units, table_units, None)
                     if u is not _INHERIT)
        source = c.get("source", str, table_source)
        if source not in SOURCES:
            raise c.fail("source", f"{source!r}; one of {SOURCES}")
        out[(row_key, col.key)] = Cell(printed, mean, std, c.get("n", int, col_n if col_n is not None else table_n),
                                       units, source, c.get("quote", str, None), c.get("note", str, None))
    return out


def _table(r: _Reader, file: str, title: str) -> PaperTable:
    r.unknown(_TABLE_KEYS)
    table_id = r.get("id", str)
    source = r.get("source", str, "table")
    printed_lines = r.get("printed_lines", str, "rows")
    if source not in SOURCES or printed_lines not in ("rows", "columns"):
        bad = "source" if source not in SOURCES else "printed_lines"
        raise r.fail(bad, f"{r.data[bad]!r}; expected one of {SOURCES if bad == 'source' else ('rows', 'columns')}")
    columns = [_column(r.child(f"columns[{i}]", c)) for i, c in enumerate(r.get("columns", list) or [])]
    col_keys = [c.key for c, _, _ in columns]
    if not columns or len(set(col_keys)) != len(col_keys):
        raise r.fail("columns", "needs at least one column, keys unique")
    for col, _, _ in columns:
        if col.derived and {col.derived.baseline, col.derived.model} - set(col_keys):
            raise r.fail(f"columns[{col.key}].derived", "names a column the table does not have")
    rows, cells = [], {}
    table_units, table_n = r.get("units", str, None), r.get("n", int, None)
    for i, spec in enumerate(r.get("rows", list) or []):
        rr = r.child(f"rows[{i}]", spec)
        rr.unknown(_ROW_KEYS)
        row = Row(rr.get("key", str), rr.get("label", str), rr.get("ours", str), rr.get("substitute", str, None),
                  rr.get("size", int, None), rr.get("higher_is_better", bool, None), rr.get("metric", str, None),
                  rr.get("footnote", str, None), rr.get("note", str, None))
        rr = r.child(f"rows[{row.key}]", spec)
        cells |= _cells(rr, row.key, rr.get("cells", dict), columns,
                        (table_units, rr.get("units", str, _INHERIT), table_n, source))
        rows.append(row)
    if not rows or len({row.key for row in rows}) != len(rows):
        raise r.fail("rows", "needs at least one row, keys unique")
    return PaperTable(table_id, file, title, r.get("name", str), r.get("caption", str), r.get("metric", str),
                      r.get("higher_is_better", bool), source, printed_lines, r.get("winner", bool, True),
                      r.get("study_config", str, None), tuple(rows), tuple(c for c, _, _ in columns), cells,
                      tuple(r.get("notes", list, None) or ()), r.get("study_note", str, None))


def _fact(r: _Reader) -> Fact:
    r.unknown({"key", "value", "printed", "source", "quote", "where", "units", "out_of", "ours", "note"})
    printed = r.get("printed", str, None)
    number = _CELL.match(printed.strip()) if printed is not None else None
    if "value" not in r.data:
        if number is None:
            raise r.fail("value", "missing (and no numeric 'printed' to read it from)")
        value = parse_number(number["mean"])
    else:
        value = r.data["value"]
        if number and isinstance(value, int | float) and value != parse_number(number["mean"]):
            raise r.fail("value", f"{value!r} is not the printed {printed!r}")
    source = r.get("source", str, "text")
    if source not in SOURCES:
        raise r.fail("source", f"{source!r}; one of {SOURCES}")
    return Fact(r.get("key", str), value, printed, source, r.get("quote", str, None), r.get("where", str, None),
                r.get("units", str, None), r.get("out_of", int, None), r.data.get("ours"), r.get("note", str, None))


def load_file(path: str | Path) -> Paper:
    """One paper's YAML: its tables and facts, validated."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TasksimError(f"{path.name}: not readable YAML ({type(exc).__name__}: {exc})".replace("\n", " ")) from None
    r = _Reader(path.name, "paper", data)
    r.unknown({"paper", "title", "tables", "facts", "notes"})
    file, title = r.get("paper", str), r.get("title", str)
    tables = tuple(_table(r.child(f"tables[{i}]", t), file, title) for i, t in enumerate(r.get("tables", list, [])))
    facts = None
    if (spec := r.get("facts", dict, None)) is not None:
        f = r.child("facts", spec)
        f.unknown({"id", "study_config", "items"})
        items = tuple(_fact(f.child(f"items[{i}]", x)) for i, x in enumerate(f.get("items", list)))
        if len({x.key for x in items}) != len(items):
            raise f.fail("items", "fact keys must be unique")
        facts = FactSet(f.get("id", str), file, title, f.get("study_config", str, None), items)
    ids = [t.id for t in tables] + ([facts.id] if facts else [])
    if len(set(ids)) != len(ids):
        raise r.fail("tables", f"ids must be unique: {ids}")
    return Paper(file, title, tables, facts, tuple(r.get("notes", list, None) or ()))


def tables_dir() -> Path:
    return Path(str(resources.files("tasksim_ray.papers") / "tables"))


@cache
def papers() -> tuple[Paper, ...]:
    """Every stored paper, in file order (000, 001, ...)."""
    return tuple(load_file(p) for p in sorted(tables_dir().glob("*.yaml")))


@cache
def _index() -> dict[str, PaperTable | FactSet]:
    out: dict[str, PaperTable | FactSet] = {}
    for paper in papers():
        for item in (*paper.tables, *([paper.facts] if paper.facts else [])):
            if item.id in out:
                raise TasksimError(f"{item.paper}: id '{item.id}' is used by another paper's file too")
            out[item.id] = item
    return out


class _Ids:
    """A lazy, read-only list of ids: the YAML files are read on first use."""

    def __init__(self, kind: type) -> None:
        self._kind = kind

    def _ids(self) -> list[str]:
        return [k for k, v in _index().items() if isinstance(v, self._kind)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids())

    def __len__(self) -> int:
        return len(self._ids())

    def __contains__(self, item: object) -> bool:
        return item in self._ids()

    def __repr__(self) -> str:
        return repr(self._ids())


TABLES = _Ids(PaperTable)
FACT_SETS = _Ids(FactSet)


def lookup(item_id: str) -> PaperTable | FactSet:
    found = _index().get(item_id)
    if found is None:
        raise TasksimError(f"unknown paper table '{item_id}'; stored: {', '.join(_index())}")
    return found


def load(table_id: str) -> PaperTable:
    """The stored table ``table_id`` (e.g. ``"001/table3"``)."""
    found = lookup(table_id)
    if not isinstance(found, PaperTable):
        raise TasksimError(f"'{table_id}' is a set of facts, not a table; use load_facts")
    return found


def load_facts(facts_id: str) -> FactSet:
    """The stored facts ``facts_id`` (e.g. ``"000/facts"``)."""
    found = lookup(facts_id)
    if not isinstance(found, FactSet):
        raise TasksimError(f"'{facts_id}' is a table, not a set of facts; use load")
    return found
