"""Where a result came from: every report records when, from which commit, on which machine, with
which command and config it ran (``run.json`` + ``config.yaml`` beside the report), and
:func:`publish_report` turns a run's report into a ``results/<study>/`` page generated from them, so
a committed result is never typed by hand."""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import write_json_atomic, write_text_atomic

RUN_FILE, CONFIG_FILE, NOTES_FILE = "run.json", "config.yaml", "notes.md"
_REPO = Path(__file__).resolve().parents[2]


def commit() -> str:
    """The checkout's short commit, with ``+dirty`` when tracked files differ from it; ``unknown``
    outside a git checkout (an installed package)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "tasksim_ray", "configs")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model and count, memory, GPUs (by name, when torch sees CUDA), OS and Python."""
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gib = None
    gpus: list[str] = []
    if "torch" in sys.modules:  # never import torch just to describe the machine
        cuda = sys.modules["torch"].cuda
        gpus = [cuda.get_device_name(i) for i in range(cuda.device_count())] if cuda.is_available() else []
    return {"cpu": _cpu_model(), "cpus": os.cpu_count(), "memory_gib": mem_gib, "gpus": gpus,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def _versions() -> dict[str, str]:
    out = {}
    for pkg in ("tasksim-ray", "torch", "ray", "torch-geometric"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def record_run(report_dir: Path, config: dict[str, Any], started: datetime,
               studies: list[str] | None = None) -> dict[str, Any]:
    """Write ``run.json`` (date, commit, machine, command, versions, wall time) and ``config.yaml``
    (the resolved config, every default filled in) into a report folder; returns the record."""
    ended = datetime.now(timezone.utc)
    run = {"date": ended.strftime("%Y-%m-%d"), "started": started.isoformat(timespec="seconds"),
           "wall_s": round((ended - started).total_seconds(), 1), "commit": commit(),
           "command": shlex.join(["tasksim", *sys.argv[1:]]) if Path(sys.argv[0]).name == "tasksim" else None,
           "studies": studies, "machine": machine(), "versions": _versions()}
    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / RUN_FILE, run)
    write_text_atomic(report_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))
    return run


def provenance_table(run: dict[str, Any]) -> list[str]:
    """The record as a two-column Markdown table (the top of every report and results page)."""
    m = run["machine"]
    hw = (f"{m['cpus']} x {m['cpu']}, {m['memory_gib']} GiB" + (f", GPU: {', '.join(m['gpus'])}" if m["gpus"]
                                                               else ", no GPU"))
    rows = [("date", run["date"]), ("commit", f"`{run['commit']}`"), ("command", f"`{run['command']}`"
                                                                                  if run.get("command") else "-"),
            ("config", f"`{CONFIG_FILE}` beside this report (resolved, every default filled in)"),
            ("machine", hw), ("wall time", f"{run['wall_s'] / 60:.1f} min (this invocation; cached work is reused)"),
            ("versions", ", ".join(f"{k} {v}" for k, v in run["versions"].items()))]
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def publish_report(report_dir: Path, dest: Path, title: str, notes: Path | None = None) -> Path:
    """Copy a run's report (its Markdown, JSON, figures, ``run.json`` and ``config.yaml``) into
    ``dest`` and generate ``dest/README.md``: the title, the provenance table, ``notes`` (what the
    run reduced from the paper's setting, where it disagrees with the paper: the reader's part) and
    the report itself. Per-cell records are left out of the JSON (they stay in the run's cache)."""
    report_dir, dest = Path(report_dir), Path(dest)
    if not (report_dir / RUN_FILE).is_file():
        raise TasksimError(f"{report_dir}: no {RUN_FILE}; publish a report folder written by a run "
                           "(<workdir>/report or <workdir>/report/transfer)")
    dest.mkdir(parents=True, exist_ok=True)
    reports = sorted(p for p in report_dir.glob("*.md") if p.name not in ("README.md", NOTES_FILE))
    for p in sorted(report_dir.iterdir()):
        if p.suffix == ".json" and p.name != RUN_FILE:
            doc = yaml.safe_load(p.read_text())  # JSON is YAML; drop the per-cell records
            for study in doc.values() if isinstance(doc, dict) else []:
                if isinstance(study, dict):
                    study.pop("cells", None)
            write_json_atomic(dest / p.name, doc)
        elif p.is_file() and p.suffix in (".md", ".png", ".yaml") or p.name == RUN_FILE:
            shutil.copy2(p, dest / p.name)
    if notes is not None and notes.resolve() != (dest / NOTES_FILE).resolve():
        shutil.copy2(notes, dest / NOTES_FILE)  # kept, so `tasksim recompare` can regenerate the README
    return page_readme(dest, title, notes.read_text() if notes is not None else None, reports)


def page_readme(dest: Path, title: str, notes: str | None, reports: list[Path],
                recompared: dict[str, str] | None = None) -> Path:
    """``dest/README.md``: the title, the notes, a line when the page's comparisons were recomputed
    after the run (``tasksim recompare``), then each report with its headings one level down."""
    body = [f"# {title}", ""]
    if notes is not None:
        body += [notes.strip(), ""]
    if recompared is not None:
        body += [f"*Beside-the-paper tables and verdicts recomputed from the stored results on {recompared['date']} "
                 f"at commit `{recompared['commit']}` (`tasksim recompare`); the measurements are the run's below.*", ""]
    for p in reports:
        text = p.read_text().strip().splitlines()
        body += [line.replace("# ", "## ", 1) if line.startswith("# ") else line for line in text] + [""]
    out = dest / "README.md"
    write_text_atomic(out, "\n".join(body))
    return out
