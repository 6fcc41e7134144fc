"""Transfer verbs: pretrain (per task, or a subset under a budget), finetune, curves,
transfer-matrix, subset-study, moe, strategies, and study (the whole design in one run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from tasksim_ray.cli.app import ConfigArg, SetOpt, app, console, overrides, user_errors
from tasksim_ray.config import PipelineConfig, load_config
from tasksim_ray.errors import TasksimError

TargetOpt = Annotated[str, typer.Option("--target", help="target task")]
SourceOpt = Annotated[list[str] | None, typer.Option("--source", help="source task (repeatable)")]


def _load(config: Path, sets: list[str] | None) -> PipelineConfig:
    return load_config(config, overrides(sets))


def _tasks(csv: str) -> list[str]:
    return [t.strip() for t in csv.split(",") if t.strip()]


@app.command()
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


@app.command()
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
    """Run ``studies`` (None: the whole design, with the strategies study if the config names pairs)."""
    with user_errors():
        from tasksim_ray.transfer.runner import run_transfer

        cfg = _load(config, sets)
        if studies is None:
            studies = cfg.transfer.studies or ["matrix", "subset", "moe"] + (["strategies"] if cfg.transfer.strategy_pairs else [])
        result = run_transfer(cfg, studies, console, **kw)
    md = Path(result["paths"]["markdown"])
    console.print(md.read_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"Transfer report: {md.parent}/ ({md.name}, {len(result['paths']) - 2} figures)")


@app.command()
def curves(config: ConfigArg, target: TargetOpt, source: SourceOpt = None, set_: SetOpt = None) -> None:
    """Learning curves of TARGET: scratch and fine-tuned from each source (default: every other task)."""
    _study(config, set_, ["curves"], target=target, sources=source)


@app.command(name="transfer-matrix")
def transfer_matrix(config: ConfigArg, set_: SetOpt = None) -> None:
    """Gain of every target from every other task's model, and how well each similarity predicts it."""
    _study(config, set_, ["matrix"])


@app.command(name="subset-study")
def subset_study(config: ConfigArg, set_: SetOpt = None) -> None:
    """Per target: pretrain on the selected diverse subset vs all other tasks under the budget, fine-tune."""
    _study(config, set_, ["subset"])


@app.command()
def moe(config: ConfigArg, set_: SetOpt = None) -> None:
    """Per target: a mixture of the other tasks' frozen experts with top-k gating."""
    _study(config, set_, ["moe"])


@app.command()
def budget(config: ConfigArg, set_: SetOpt = None) -> None:
    """Per target: every other task alone, and all of them, pretrained under one budget; which single
    source the similarities (CSI first) pick, and does it beat the budget spread over all?"""
    _study(config, set_, ["budget"])


@app.command()
def ptft(config: ConfigArg, set_: SetOpt = None) -> None:
    """Per target: fine-tuned from each other task's model and from one model pretrained on all of them
    (MPT); does MPT beat the best pairwise source? transfer.ood targets are never a source."""
    _study(config, set_, ["ptft"])


@app.command()
def strategies(config: ConfigArg, target: Annotated[str | None, typer.Option(help="target task")] = None,
               source: SourceOpt = None, set_: SetOpt = None) -> None:
    """Fine-tuning variants (transfer.variants) on TARGET from each source, or on transfer.strategy_pairs."""
    _study(config, set_, ["strategies"], target=target, sources=source)


@app.command()
def study(config: ConfigArg, set_: SetOpt = None) -> None:
    """The studies of transfer.studies, by default the whole transfer design in one run: gain matrix,
    similarity vs gain, subset study, MoE (and the fine-tuning variants when transfer.strategy_pairs
    is set); `studies: [methods]` is the MoE study of published extractors over split seeds, or with
    transfer.foundation the foundation fine-tuning study (configs/foundation_ft.yaml)."""
    _study(config, set_, None)

