"""Transfer verbs: pretrain (per task, or a subset under a budget), finetune (one cell), study (the
studies a config names) and one verb per registered study, generated from ``registry.STUDIES``."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tasksim_ray.cli.app import (
    PANEL_STAGES,
    PANEL_STUDIES,
    PANEL_TRANSFER,
    ConfigArg,
    SetOpt,
    app,
    console,
    overrides,
    user_errors,
)
from tasksim_ray.config import PipelineConfig, load_config
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import STUDIES

TargetOpt = Annotated[str, typer.Option("--target", help="target task")]
SourceOpt = Annotated[list[str] | None, typer.Option("--source", help="source task (repeatable)")]
_OPTIONS = {"target": Annotated[str | None, typer.Option("--target", help="target task")], "source": SourceOpt}


def _load(config: Path, sets: list[str] | None) -> PipelineConfig:
    return load_config(config, overrides(sets))


def _tasks(csv: str) -> list[str]:
    return [t.strip() for t in csv.split(",") if t.strip()]


@app.command(rich_help_panel=PANEL_STAGES)
def pretrain(config: ConfigArg, set_: SetOpt = None,
             subset: Annotated[str | None, typer.Option(help="comma-separated tasks: one multi-task model "
                                                              "under transfer.budget")] = None) -> None:
    """Train one model per task (Ray tasks), or with --subset one multi-task model per budget split."""
    with user_errors():
        cfg = _load(config, set_)
        if subset is None:
            from tasksim_ray.stages.pipeline import run_pipeline

            result = run_pipeline(cfg, console, until="pretrain")
            console.print(f"\\[pretrain] models: {result.artifact}")
            return
        from tasksim_ray.transfer.runner import pretrain_subset_models

        models = pretrain_subset_models(cfg, _tasks(subset), console)
    table = Table(title=f"Multi-task pretraining on {subset}")
    for col in ("samples x epochs", "labels used / available", "val score (mean std. MAE)", "checkpoint"):
        table.add_column(col)
    for m in models:
        table.add_row(f"{m.split[0]} x {m.split[1]}", f"{m.metrics['labels_used']} / {m.metrics['labels_available']}",
                      f"{m.metrics['best_val_mae']:.4f}", str(m.directory))
    console.print(table)


@app.command(rich_help_panel=PANEL_TRANSFER)
def finetune(config: ConfigArg, target: TargetOpt, source: SourceOpt = None, set_: SetOpt = None,
             subset: Annotated[str | None, typer.Option(help="comma-separated tasks pretrained together")] = None,
             size: Annotated[int | None, typer.Option(help="training-set size (default: the largest)")] = None,
             fold: Annotated[int, typer.Option(help="fold")] = 0) -> None:
    """Fine-tune TARGET from one source model (or a pretrained subset) next to scratch, on one cell."""
    with user_errors():
        sources = _tasks(subset) if subset else list(source or [])
        if (len(sources) != 1 and not subset) or (subset and source):
            raise TasksimError("give exactly one --source, or --subset a,b,...")
        from tasksim_ray.transfer.runner import finetune_once

        r = finetune_once(_load(config, set_), target, sources, size, fold, console, subset=subset is not None)
    s, f = r["scratch"], r["finetuned"]
    console.print(f"{target} (n={r['size']}, fold {r['fold']}): test MAE scratch {s['test_mae']:.4g} {r['units']}, "
                  f"from {f['recipe']} {f['test_mae']:.4g} {r['units']} "
                  f"({100 * (1 - f['test_mae'] / s['test_mae']):+.1f}%)")


def _study(config: Path, sets: list[str] | None, studies: list[str] | None, **kw: Any) -> None:
    """Run ``studies`` (None: the config's ``transfer.study_names()``) and print the report."""
    with user_errors():
        from tasksim_ray.transfer.runner import run_transfer

        cfg = _load(config, sets)
        if not studies and not cfg.transfer.studies:  # no silent default: say what runs and how to choose
            logging.getLogger("tasksim_ray.cli").warning(
                "transfer.studies is not set: running the default studies %s (name them in transfer.studies to "
                "choose)", ", ".join(cfg.transfer.study_names()))
        result = run_transfer(cfg, studies or cfg.transfer.study_names(), console, **kw)
    md = Path(result["paths"]["markdown"])
    console.print(md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"Transfer report: {md.parent}/ ({md.name}, {len(result['paths']) - 3} figures); "
                  f"page: {Path(result['paths']['html']).resolve().as_uri()}")


@app.command(rich_help_panel=PANEL_STUDIES)
def study(config: ConfigArg, set_: SetOpt = None) -> None:
    """Run the studies of transfer.studies in one go (default: gain matrix, similarity vs gain, subset
    study and mixture of experts, plus fine-tuning variants when transfer.strategy_pairs is set)."""
    _study(config, set_, None)


_VERBS: set[str] = set()


def add_study_verbs() -> None:
    """One verb per registered study that names one (``StudySpec.verb``), with the options it lists;
    studies registered by user code before ``main()`` get theirs too."""
    for name in STUDIES.names():
        spec = STUDIES.get(name)
        if spec.verb is None or spec.verb in _VERBS:
            continue

        def verb(config: Path, set_: list[str] | None = None, target: str | None = None,
                 source: list[str] | None = None, _name: str = name) -> None:
            _study(config, set_, [_name], **({"target": target, "sources": source} if target or source else {}))

        params = [inspect.Parameter("config", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=ConfigArg),
                  inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SetOpt)]
        params += [inspect.Parameter(opt, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=_OPTIONS[opt])
                   for opt in spec.options]
        verb.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        app.command(name=spec.verb, help=spec.help, rich_help_panel=PANEL_STUDIES)(verb)
        _VERBS.add(spec.verb)


add_study_verbs()
