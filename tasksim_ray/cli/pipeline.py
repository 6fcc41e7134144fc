"""Pipeline verbs: ``tasksim run CONFIG`` runs everything; each stage verb (``tasksim embed CONFIG``
...) runs the pipeline up to that stage, reusing whatever is cached."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
import yaml
from rich.table import Table

from tasksim_ray.cli.app import PANEL_STAGES, ConfigArg, SetOpt, app, console, overrides, user_errors
from tasksim_ray.config import PipelineConfig, load_config
from tasksim_ray.registry import METRICS

if TYPE_CHECKING:
    from tasksim_ray.stages.pipeline import PipelineResult

DEMO_CONFIG = "demo.yaml"


def similarity_table(names: list[str], sim: np.ndarray, subset: list[str], metric: str) -> Table:
    table = Table(title=f"{metric.upper()} task similarity (selected tasks in bold)")
    table.add_column("")
    for n in names:
        table.add_column(f"[bold]{n}[/bold]" if n in subset else n, justify="right")
    for i, n in enumerate(names):
        table.add_row(f"[bold]{n}[/bold]" if n in subset else n, *(f"{v:.2f}" for v in sim[i]))
    return table


def _execute(cfg: PipelineConfig, until: str) -> PipelineResult:
    from tasksim_ray.stages.pipeline import run_pipeline  # heavy imports (torch, ray) only when running

    return run_pipeline(cfg, console, until=until)


def _run_verb(config: Path, sets: list[str] | None, until: str) -> None:
    with user_errors():
        cfg = load_config(config, overrides(sets))
        result = _execute(cfg, until)
    sel = result.selection
    if sel is not None:
        console.print(similarity_table(result.tasks, result.similarity, sel.subset, result.metric))
        console.print(f"Selected pretraining subset ({result.metric} >= {sel.threshold}): "
                      f"[bold green]{', '.join(sel.subset) or '(none)'}[/bold green]")
        if sel.uncoverable:
            console.print(f"No other task reaches the threshold for: {', '.join(sel.uncoverable)}")
    if result.paths:
        figures = sum(p.suffix == ".png" for p in result.paths.values())
        console.print(f"Report: {result.paths['json'].parent}/ (report.json, summary.md, {figures} figures)",
                      highlight=False, soft_wrap=True)
        console.print(f"Open in a browser: {result.paths['html'].resolve().as_uri()}", highlight=False, soft_wrap=True)
    elif result.artifact is not None:
        console.print(f"\\[{until}] artifact: {result.artifact}")


@app.command()
def run(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run the whole pipeline: tasks -> ... -> similarity -> subset -> report."""
    _run_verb(config, set_, "report")


@contextmanager
def demo_config() -> Iterator[Path]:
    """The demo config shipped inside the package (``configs/demo.yaml`` in the repository links to
    it), so ``tasksim demo`` needs no repository checkout and no particular working directory."""
    with resources.as_file(resources.files("tasksim_ray.cli") / "configs" / DEMO_CONFIG) as path:
        yield path


@app.command()
def demo(set_: SetOpt = None) -> None:
    """Run the shipped demo config (full QM9, about 7 minutes on 2 cores), from any folder."""
    with demo_config() as path:
        _run_verb(path, set_, "report")


def _stage_command(stage: str, doc: str) -> None:
    def command(config: ConfigArg, set_: SetOpt = None) -> None:
        _run_verb(config, set_, stage)

    command.__doc__ = doc
    app.command(name=stage, rich_help_panel=PANEL_STAGES)(command)


for _stage, _doc in [
    ("tasks", "Load the tasks and store them as Parquet."),
    ("preprocess", "Drop correlated targets; split 80/10/10 and permute the training set into folds."),
    ("featurize", "Featurise the training and validation molecules into graphs."),
    ("probe", "Build the probe set."),
    ("embed", "Stream the probe set through every task model (Ray Data + actors)."),
]:
    _stage_command(_stage, _doc)


@app.command(rich_help_panel=PANEL_STAGES)
def similarity(config: ConfigArg, set_: SetOpt = None,
               metric: Annotated[list[str] | None, typer.Option(help=f"metric(s): {', '.join(METRICS)}")] = None,
               ) -> None:
    """Compute similarity metrics from the cached embeddings, select the subset, write the report."""
    sets = list(set_ or [])
    if metric:
        sets.append(f"similarity.metrics={yaml.safe_dump(metric, default_flow_style=True).strip()}")
    _run_verb(config, sets, "similarity")

