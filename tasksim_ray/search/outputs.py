"""What a search leaves behind: every trial in one table, the best recipe as a ready-to-run
config, and Optuna's optimisation-history and parameter-importance plots."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from ray import tune

from tasksim_ray.config import PipelineConfig
from tasksim_ray.infra.cache import write_text_atomic
from tasksim_ray.infra.figures import save_figure
from tasksim_ray.infra.progress import Console
from tasksim_ray.search.space import decode
from tasksim_ray.search.trainable import SearchJob

PARAMS = ("subset_size", "split", "sampling", "strategy", "lr", "batch_size", "regularizer", "reg_weight")


def _last_line(error: BaseException | None) -> str:
    """The exception itself (``TypeError: ...``), not Ray's wrapper lines above it."""
    lines = [ln.strip() for ln in str(error or "").splitlines() if ln.strip()]
    return re.sub(r"\x1b\[[0-9;]*m", "", lines[-1])[:300] if lines else ""


def results_table(grid: tune.ResultGrid) -> pd.DataFrame:
    """One row per trial: its recipe, metrics, epochs used, wall time, and error if it failed."""
    rows = []
    for result in grid:
        m, c = result.metrics or {}, result.config or {}
        rows.append({"trial_id": m.get("trial_id", Path(result.path).name),
                     "status": "failed" if result.error else "ok",
                     "error": _last_line(result.error),
                     "subset": "+".join(c.get("subset", [])), **{k: c.get(k) for k in PARAMS},
                     "objective": m.get("objective"), "epochs": m.get("training_iteration", 0),
                     "seconds": round(float(m.get("time_total_s", 0.0)), 2),
                     **{k: v for k, v in m.items() if k.startswith(("val_mae_", "test_mae_", "epochs_"))}})
    return pd.DataFrame(rows).sort_values("objective", na_position="last").reset_index(drop=True)


def best_config(cfg: PipelineConfig, job: SearchJob, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The input config with the best recipe's budget split and fine-tuning settings filled in."""
    recipe = decode(params, job.spec)
    raw = cfg.model_dump(mode="json")
    raw["transfer"]["finetune"] = recipe.finetune.model_dump(mode="json")
    raw["transfer"]["budget"] |= {"samples": recipe.split[0], "epochs": None, "splits": None,
                                  "sampling": recipe.budget.sampling}
    targets = list(job.cells)
    header = (f"# Best recipe of search '{cfg.search.name}' for {', '.join(targets)}: pretrain on "
              f"{', '.join(recipe.subset)} ({recipe.split[0]} samples x {recipe.split[1]} epochs), then fine-tune.\n"
              f"# Run it: tasksim finetune THIS_FILE --target {targets[0]} --subset {','.join(recipe.subset)}\n")
    return header + yaml.safe_dump(raw, sort_keys=False), {"subset": list(recipe.subset), "split": list(recipe.split)}


def _plots(out: Path, storage_url: str, name: str, console: Console) -> dict[str, str]:
    study = optuna.load_study(study_name=name, storage=storage_url)
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for key, plot in (("history", optuna.visualization.matplotlib.plot_optimization_history),
                          ("importances", optuna.visualization.matplotlib.plot_param_importances)):
            try:
                ax = plot(study)
            except (ValueError, RuntimeError) as exc:  # e.g. too few finished trials for importances
                console.print(f"\\[search] no {key} plot: {exc}", highlight=False)
                continue
            paths[key] = str(out / f"{key}.png")
            fig = ax.figure
            fig.set_size_inches(7, 4.5)
            fig.tight_layout()
            save_figure(fig, Path(paths[key]))
    return paths


def write_outputs(cfg: PipelineConfig, grid: tune.ResultGrid, job: SearchJob, out: Path, storage_url: str,
                  console: Console) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    table = results_table(grid)
    table.to_parquet(out / "trials.parquet.tmp", index=False)
    (out / "trials.parquet.tmp").replace(out / "trials.parquet")
    write_text_atomic(out / "trials.csv", table.to_csv(index=False))
    summary: dict[str, Any] = {"trials": len(table), "failed": int((table["status"] == "failed").sum()),
                               "epochs": int(table["epochs"].sum()), "table": str(out / "trials.csv")}
    ok = table[table["status"] == "ok"].dropna(subset=["objective"])
    if len(ok):
        best = grid.get_best_result(metric="objective", mode="min", scope="last")
        text, recipe = best_config(cfg, job, best.config)
        write_text_atomic(out / "best.yaml", text)
        summary |= {"best_objective": float(ok["objective"].iloc[0]), "best": recipe,
                    "best_config": str(out / "best.yaml")}
    summary["plots"] = _plots(out, storage_url, cfg.search.name, console)
    return summary
