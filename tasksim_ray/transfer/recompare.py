"""A published page's beside-the-paper tables rebuilt from its stored results by today's comparison and
verdict rule (:mod:`tasksim_ray.papers.verdict`), without rerunning a cell.

A page (``tasksim publish``'s DEST) keeps each run of studies as ``<studies>.json`` and ``<studies>.md``
beside the resolved ``config.yaml``. When the rule that turns ours and the paper's cells into verdicts
changes, the measurements do not: this recomputes every ``## Beside the paper`` section (markdown and
the JSON's ``paper_comparison``) from the JSON, regenerates ``README.md`` and records the recomputation
(date, commit) in ``run.json``, so the page says which code wrote its verdicts.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tasksim_ray.config.studies import PaperTableConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import write_json_atomic, write_text_atomic
from tasksim_ray.infra.provenance import CONFIG_FILE, NOTES_FILE, RUN_FILE, commit, page_readme
from tasksim_ray.registry import STUDIES
from tasksim_ray.transfer.report import beside_papers

HEADER = "## Beside the paper: "


def _paper_refs(page: Path) -> list[PaperTableConfig]:
    path = page / CONFIG_FILE
    if not path.is_file():
        raise TasksimError(f"{page}: no {CONFIG_FILE}; recompare a page written by `tasksim publish`")
    transfer = (yaml.safe_load(path.read_text()) or {}).get("transfer") or {}
    try:
        return [PaperTableConfig.model_validate(x) for x in transfer.get("paper_tables") or []]
    except ValidationError as e:
        raise TasksimError(f"{path}: transfer.paper_tables: {e.errors()[0]['msg']}") from None


def _study_results(page: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The page's ``<studies>.json`` files: those whose top-level keys are all registered studies."""
    found = []
    for path in sorted(page.glob("*.json")):
        if path.name == RUN_FILE:
            continue
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and doc and all(k in STUDIES for k in doc) and path.with_suffix(".md").is_file():
            found.append((path, doc))
    return found


def replace_sections(md: str, sections: dict[str, str]) -> str:
    """``md`` with each ``## Beside the paper: <table>`` section (to the next ``#``/``##`` heading) replaced
    by ``sections[table]``; a table without a section is appended."""
    lines, out, skipping, done = md.rstrip("\n").split("\n"), [], False, set()
    for line in lines:
        if line.startswith(HEADER) and line[len(HEADER):].strip() in sections:
            table = line[len(HEADER):].strip()
            out += sections[table].rstrip("\n").split("\n") + [""]
            skipping, done = True, done | {table}
            continue
        if skipping and (line.startswith("# ") or line.startswith("## ")):
            skipping = False
        if not skipping:
            out.append(line)
    for table, text in sections.items():
        if table not in done:
            out += ["", *text.rstrip("\n").split("\n"), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def recompare_page(page: Path) -> list[Path]:
    """Recompute the page's beside-the-paper tables from its stored results; the files rewritten."""
    page = Path(page)
    refs = _paper_refs(page)
    results = _study_results(page)
    if not refs or not results:
        raise TasksimError(f"{page}: nothing to recompare (needs transfer.paper_tables in {CONFIG_FILE} and a "
                           "study's JSON with its markdown beside it)")
    written: list[Path] = []
    for path, doc in results:
        studies = [STUDIES.get(name).cls(name) for name in doc]
        sections: dict[str, str] = {}
        for study in studies:
            lines = beside_papers(study, doc[study.name], refs, first=study is studies[0])
            sections |= {ln[len(HEADER):]: "\n".join(lines[i:j]) for i, j, ln in _spans(lines)}
        md = path.with_suffix(".md")
        write_json_atomic(path, doc)
        write_text_atomic(md, replace_sections(md.read_text(), sections))
        written += [path, md]
    run_path = page / RUN_FILE
    run = json.loads(run_path.read_text())
    run["recompared"] = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "commit": commit(),
                         "what": "beside-the-paper tables and verdicts, from the stored results"}
    write_json_atomic(run_path, run)
    readme = page / "README.md"
    title = readme.read_text().split("\n", 1)[0].removeprefix("# ") if readme.is_file() else "Results"
    notes = page / NOTES_FILE
    reports = [p for p in sorted(page.glob("*.md")) if p.name not in ("README.md", NOTES_FILE)]
    page_readme(page, title, notes.read_text() if notes.is_file() else None, reports, run["recompared"])
    return [*written, run_path, readme]


def _spans(lines: list[str]) -> list[tuple[int, int, str]]:
    """(start, end, header) of each section :func:`beside_papers` wrote."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith(HEADER)]
    return [(i, j, lines[i]) for i, j in zip(starts, [*starts[1:], len(lines)])]
