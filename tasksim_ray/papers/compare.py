"""Ours beside the paper's: per cell both means and stds and the difference in the paper's std,
per row the paper's winner tested against ours by the verdict rule (:mod:`.verdict`: agrees,
disagrees or not resolved on a 95% interval, paired by seed where per-seed ``values`` are given), and
the count of each; facts side by side likewise.

A study report calls :func:`side_by_side` once per id its config names (the coordinator's hook,
e.g. ``transfer.paper_tables: [001/table3]``), with the per-task results it already has::

    targets = methods_json["methods"]["targets"]             # {task: {method: {mean, std, seeds}}}
    for table_id in cfg.transfer.paper_tables:
        md, data = side_by_side(table_id, targets)            # markdown + a JSON-able dict
        report_md += md; report_json.setdefault("paper_tables", {})[table_id] = data

``results`` is either ``{(task, method): (mean, std, n)}`` or the nested form the transfer reports
write, ``{task: {method: {"mean", "std", "seeds" or "n"}}}`` (entries without a mean are skipped).
A row is found under the paper's task as our loaders name it (``Row.ours``), or under the name
``aliases[row key]`` gives (users bring their own data and names), or else under the row's
``substitute`` (flagged); a column under ``methods[column key]``, else ``Column.ours``, else its key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from tasksim_ray.errors import TasksimError
from tasksim_ray.papers.schema import Cell, Column, Fact, FactSet, PaperTable, Row, relative_improvement, winners
from tasksim_ray.papers.store import lookup
from tasksim_ray.papers.verdict import RULE, Verdict, all_of, better, tally, welch


@dataclass(frozen=True)
class Measured:
    """A study's result for one (task, method): mean, std and number of seeds (std/n may be None)."""

    mean: float
    std: float | None = None
    n: int | None = None
    values: tuple[float, ...] | None = None  # per seed/fold, in seed order: verdicts pair on them


@dataclass(frozen=True)
class CellComparison:
    column: str
    paper: Cell | None
    ours: Measured | None
    delta_sigma: float | None  # (ours - paper) / paper std
    relative: float | None  # (ours - paper) / |paper|
    sign_agrees: bool | None  # derived columns (relative improvements): same sign as the paper's
    verdict: Verdict | None = None  # derived columns: the paper's sign tested on ours (model vs baseline)


@dataclass(frozen=True)
class RowComparison:
    row: Row
    task: str | None  # our task the row was matched to; None: not run
    substitute: bool
    cells: tuple[CellComparison, ...]
    paper_best: tuple[str, ...]  # the paper's best of all its competing columns (its bold)
    paper_winner: tuple[str, ...]  # the paper's best among the competing columns both have
    our_winner: tuple[str, ...]
    agrees: bool | None  # the same winner by means; None: fewer than two competing columns to compare
    verdict: Verdict | None = None  # the paper's winner beats each other column of ours, by the rule


@dataclass(frozen=True)
class Comparison:
    table: PaperTable
    rows: tuple[RowComparison, ...]
    omitted: tuple[str, ...]  # our tasks the paper's table does not have

    @property
    def agreement(self) -> int:
        return sum(r.agrees is True for r in self.rows)

    @property
    def compared(self) -> int:
        return sum(r.agrees is not None for r in self.rows)

    @property
    def verdicts(self) -> list[Verdict]:
        return [v for r in self.rows for v in [r.verdict, *(c.verdict for c in r.cells)] if v is not None]

    @property
    def sign_agreement(self) -> tuple[int, int]:
        signs = [c.sign_agrees for r in self.rows for c in r.cells if c.sign_agrees is not None]
        return sum(signs), len(signs)

    def to_markdown(self) -> str:
        return _table_markdown(self)

    def to_dict(self) -> dict[str, Any]:
        t = self.table
        signs, signed = self.sign_agreement
        return {"table": t.id, "paper": t.paper, "name": t.name, "metric": t.metric,
                "higher_is_better": t.higher_is_better, "winner_agreement": self.agreement,
                "rows_compared": self.compared, "sign_agreement": signs, "signs_compared": signed,
                "verdicts": tally(self.verdicts), "rule": RULE,
                "not_run": [r.row.key for r in self.rows if r.task is None], "omitted": list(self.omitted),
                "rows": [_row_dict(r) for r in self.rows]}


def _measured(value: Any, where: str) -> Measured:
    if isinstance(value, Measured):
        return value
    if isinstance(value, Mapping):
        n = value.get("n", value.get("seeds"))
        values = value.get("values")
        return Measured(float(value["mean"]), _opt_float(value.get("std")), None if n is None else int(n),
                        None if values is None else tuple(float(v) for v in values))
    try:
        mean, std, n = value
    except (TypeError, ValueError):
        raise TasksimError(f"results[{where}]: expected (mean, std, n) or {{'mean', 'std', 'n'}}, "
                           f"got {value!r}") from None
    return Measured(float(mean), _opt_float(std), None if n is None else int(n))


def _opt_float(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def normalize_results(results: Mapping[Any, Any]) -> dict[tuple[str, str], Measured]:
    """``{(task, method): Measured}`` from either accepted form (see the module docstring)."""
    out: dict[tuple[str, str], Measured] = {}
    for key, value in results.items():
        if isinstance(key, tuple):
            out[(str(key[0]), str(key[1]))] = _measured(value, repr(key))
        elif isinstance(value, Mapping):
            for method, entry in value.items():
                if isinstance(entry, Mapping) and "mean" in entry:
                    out[(str(key), str(method))] = _measured(entry, f"{key}.{method}")
        else:
            raise TasksimError(f"results[{key!r}]: expected a (task, method) key or a task mapping")
    return out


def _derived(table: PaperTable, row: Row, col_key: str, ours: Mapping[str, Measured]) -> Measured | None:
    d = table.column(col_key).derived
    if d is None or d.baseline not in ours or d.model not in ours:
        return None
    hib = table.higher_is_better_for(row.key)
    return Measured(relative_improvement(ours[d.baseline].mean, ours[d.model].mean, hib, d.percent))


def _cell(col: Column, paper: Cell | None, mine: Measured | None, row: str = "",
          ours: Mapping[str, Measured] | None = None, hib: bool = False) -> CellComparison:
    if paper is None or mine is None:
        return CellComparison(col.key, paper, mine, None, None, None)
    dsig = (mine.mean - paper.mean) / paper.std if paper.std else None
    rel = (mine.mean - paper.mean) / abs(paper.mean) if paper.mean else None
    sign = math.copysign(1, mine.mean) == math.copysign(1, paper.mean) if col.derived else None
    verdict = None
    if col.derived and ours and col.derived.baseline in ours and col.derived.model in ours and paper.mean != 0:
        model, base = col.derived.model, col.derived.baseline
        first, second = (model, base) if paper.mean > 0 else (base, model)
        verdict = beats(f"{row}: {first} beats {second}", ours[first], ours[second], hib)
    return CellComparison(col.key, paper, mine, dsig, rel, sign, verdict)


def beats(claim: str, a: Measured, b: Measured, higher_is_better: bool) -> Verdict:
    """The verdict on "``a`` beats ``b``": paired by seed when both have per-seed values of one length,
    else Welch's from means, stds and counts."""
    if a.values and b.values and len(a.values) == len(b.values):
        return better(claim, a.values, b.values, higher_is_better)
    first, second = (a, b) if higher_is_better else (b, a)
    return welch(claim, (first.mean, first.std, first.n), (second.mean, second.std, second.n))


def _compare_row(table: PaperTable, row: Row, task: str | None, substitute: bool,
                 ours: Mapping[str, Measured]) -> RowComparison:
    hib = table.higher_is_better_for(row.key)
    cells = [_cell(c, table.cell(row.key, c.key), ours.get(c.key) or _derived(table, row, c.key, ours), row.key,
                   ours, hib) for c in table.columns]
    paper = {c.column: c.paper.mean for c in cells if c.paper and c.ours and table.column(c.column).compete}
    mine = {c.column: c.ours.mean for c in cells if c.paper and c.ours and table.column(c.column).compete}
    paper_w, our_w = winners(paper, hib), winners(mine, hib)
    agrees = bool(set(paper_w) & set(our_w)) if table.winner and len(paper) >= 2 else None
    verdict = None
    if agrees is not None and len(paper_w) == 1:  # a tie in the paper claims no winner
        w = paper_w[0]
        label = {c.key: c.label for c in table.columns}
        verdict = all_of(f"{row.label}: {label[w]} best", [beats(f"{label[w]} beats {label[c]}", ours[w], ours[c], hib)
                                                            for c in paper if c != w])
    return RowComparison(row, task, substitute, tuple(cells), table.best(row.key), paper_w, our_w, agrees, verdict)


def compare(table: PaperTable, ours: Mapping[Any, Any], aliases: Mapping[str, str] | None = None,
            methods: Mapping[str, str] | None = None) -> Comparison:
    """``table`` beside ``ours`` (see the module docstring for the forms of ``ours`` and how rows
    and columns are matched). Rows we did not run stay, as "not run"; our tasks the paper lacks are
    listed in ``omitted`` only."""
    results = normalize_results(ours)
    aliases, methods = dict(aliases or {}), dict(methods or {})
    for given, kind, keys in ((aliases, "rows", [r.key for r in table.rows]),
                              (methods, "columns", [c.key for c in table.columns])):
        if unknown := sorted(set(given) - set(keys)):
            raise TasksimError(f"{table.id}: {'aliases' if kind == 'rows' else 'methods'} name {kind} {unknown}; "
                               f"{kind}: {keys}")
    col_name = {c.key: methods.get(c.key) or c.ours or c.key for c in table.columns}
    by_task: dict[str, dict[str, Measured]] = {}
    for (task, method), m in results.items():
        by_task.setdefault(task, {})[method] = m
    rows, used = [], set()
    for row in table.rows:
        primary = aliases.get(row.key) or row.ours
        task, substitute = None, False
        for name, is_sub in ((primary, False), (row.substitute, True)):
            if name and any(col_name[c] in by_task.get(name, {}) for c in col_name):
                task, substitute = name, is_sub
                break
        mine = {c: by_task[task][n] for c, n in col_name.items() if task and n in by_task[task]}
        rows.append(_compare_row(table, row, task, substitute, mine))
        used.add(task)
    return Comparison(table, tuple(rows), tuple(sorted(set(by_task) - used)))


def _fmt(value: float | None, std: float | None, like: Cell | None, percent: bool = False) -> str:
    """``value ± std`` with the paper's decimals where the paper has the cell."""
    if value is None:
        return ""
    if like is not None:
        decimals = len(like.printed.split("±")[0].strip().rstrip("%").partition(".")[2])
        text = f"{value:.{decimals}f}" + (f" ± {std:.{decimals}f}" if std is not None else "")
    else:
        text = f"{value:.4g}" + (f" ± {std:.2g}" if std is not None else "")
    return text + ("%" if percent else "")


def _delta(c: CellComparison) -> str:
    if c.sign_agrees is not None:
        return "sign agrees" if c.sign_agrees else "sign differs"
    if c.delta_sigma is not None:
        return f"{c.delta_sigma:+.2f}"
    return f"({c.relative * 100:+.1f}%)" if c.relative is not None else ""


def _table_markdown(cmp: Comparison) -> str:
    t = cmp.table
    direction = "higher is better" if t.higher_is_better else "lower is better"
    head = ["row", "our task"]
    for col in t.columns:
        head += [f"{col.label} ours", f"{col.label} paper", "Δ/σ"]
    head += ["winner ours", "winner paper", "verdict"]
    lines = [f"**{t.id}**: {t.name} of `{t.paper}` ({t.metric}; {direction}). Δ/σ = (ours − paper) / paper std; "
             "(±x%) where the paper gives no std; derived columns compare signs. Verdict: the paper's winner "
             "against each other column of ours. " + RULE, "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    label = {c.key: c.label for c in t.columns}
    for r in cmp.rows:
        task = "not run" if r.task is None else f"{r.task}{' (substitute)' if r.substitute else ''}"
        hib = r.row.higher_is_better
        flip = f" ({'higher' if hib else 'lower'} is better)" if hib is not None and hib != t.higher_is_better else ""
        cells = [r.row.label + flip, task]
        for c in r.cells:
            pct = c.paper is not None and c.paper.printed.endswith("%") or bool(t.column(c.column).derived)
            cells += [_fmt(c.ours.mean, c.ours.std, c.paper, pct) if c.ours else "",
                      c.paper.printed if c.paper else "—", _delta(c)]
        agree = "" if r.verdict is None else r.verdict.outcome
        cells += [", ".join(label[k] for k in r.our_winner) if r.agrees is not None else "",
                  ", ".join(label[k] for k in r.paper_winner) if r.agrees is not None else "", agree]
        lines.append("| " + " | ".join(cells) + " |")
    signs, signed = cmp.sign_agreement
    lines += ["", f"Verdicts: {tally(cmp.verdicts)}. Same winner by means: {cmp.agreement} of {cmp.compared} rows "
                  f"compared ({sum(r.task is None for r in cmp.rows)} of {len(cmp.rows)} rows not run)."
              + (f" Same sign by means: {signs} of {signed}." if signed else "")]
    lines += [f"- {v.line()}" for v in cmp.verdicts]
    if cmp.omitted:
        lines.append(f"Not in the paper's table (omitted): {', '.join(cmp.omitted)}.")
    return "\n".join(lines) + "\n"


def _cell_dict(c: CellComparison) -> dict[str, Any]:
    p, o = c.paper, c.ours
    return {"column": c.column, "paper_printed": p.printed if p else None, "paper_mean": p.mean if p else None,
            "paper_std": p.std if p else None, "paper_n": p.n if p else None, "units": p.units if p else None,
            "ours_mean": o.mean if o else None, "ours_std": o.std if o else None, "ours_n": o.n if o else None,
            "delta_sigma": c.delta_sigma, "relative": c.relative, "sign_agrees": c.sign_agrees,
            "verdict": c.verdict.to_dict() if c.verdict else None}


def _row_dict(r: RowComparison) -> dict[str, Any]:
    return {"row": r.row.key, "label": r.row.label, "task": r.task, "substitute": r.substitute,
            "paper_best": list(r.paper_best), "paper_winner": list(r.paper_winner), "our_winner": list(r.our_winner),
            "agrees": r.agrees, "verdict": r.verdict.to_dict() if r.verdict else None,
            "cells": [_cell_dict(c) for c in r.cells]}


@dataclass(frozen=True)
class FactComparison:
    facts: FactSet
    rows: tuple[tuple[Fact, Any, bool | None], ...]  # (fact, ours or None, agrees or None)

    @property
    def agreement(self) -> tuple[int, int]:
        known = [a for _, _, a in self.rows if a is not None]
        return sum(known), len(known)

    def to_markdown(self) -> str:
        lines = [f"**{self.facts.id}**: stated in `{self.facts.paper}`", "",
                 "| fact | paper | ours | same |", "|---|---|---|---|"]
        for fact, mine, agrees in self.rows:
            paper = fact.printed if fact.printed is not None else _show(fact.value)
            lines.append(f"| {fact.key} | {paper} | {'' if mine is None else _show(mine)} | "
                         f"{'' if agrees is None else ('yes' if agrees else 'no')} |")
        same, known = self.agreement
        return "\n".join([*lines, "", f"The same as the paper: {same} of {known} facts measured (settings and "
                                       "stated values, compared as given; not a verdict).", ""])

    def to_dict(self) -> dict[str, Any]:
        same, known = self.agreement
        return {"facts": self.facts.id, "paper": self.facts.paper, "agreement": same, "compared": known,
                "rows": [{"key": f.key, "paper": f.value, "paper_ours": f.ours, "ours": m, "agrees": a}
                         for f, m, a in self.rows]}


def _show(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list | tuple | set) else str(value)


def _same(paper: Any, mine: Any) -> bool:
    if isinstance(paper, list | tuple | set) and isinstance(mine, list | tuple | set):
        return sorted(map(str, paper)) == sorted(map(str, mine))
    if isinstance(paper, int | float) and isinstance(mine, int | float) and not isinstance(mine, bool):
        return math.isclose(float(paper), float(mine), rel_tol=1e-9, abs_tol=1e-12)
    return paper == mine


def compare_facts(facts: FactSet, ours: Mapping[str, Any]) -> FactComparison:
    """Each stated fact beside our value for the same key (a fact's ``ours`` form, e.g. our task
    names for the paper's subset, is what ours is compared with where it is given)."""
    unknown = sorted(set(ours) - {f.key for f in facts.facts})
    if unknown:
        raise TasksimError(f"{facts.id}: no facts {unknown}; facts: {[f.key for f in facts.facts]}")
    rows = []
    for fact in facts.facts:
        mine = ours.get(fact.key)
        target = fact.ours if fact.ours is not None else fact.value
        rows.append((fact, mine, None if mine is None else _same(target, mine)))
    return FactComparison(facts, tuple(rows))


class SideBySide(NamedTuple):
    markdown: str
    data: dict[str, Any]


def side_by_side(item_id: str, results: Mapping[Any, Any], aliases: Mapping[str, str] | None = None,
                 methods: Mapping[str, str] | None = None) -> SideBySide:
    """One call for a study report: the stored table (or set of facts) ``item_id`` beside
    ``results``, as markdown and a JSON-able dict. For a table, ``results`` is as in
    :func:`compare`; for facts (``"000/facts"``), ``{fact key: our value}``."""
    item = lookup(item_id)
    if isinstance(item, FactSet):
        fc = compare_facts(item, results)
        return SideBySide(fc.to_markdown(), fc.to_dict())
    cmp = compare(item, results, aliases, methods)
    return SideBySide(cmp.to_markdown(), cmp.to_dict())
