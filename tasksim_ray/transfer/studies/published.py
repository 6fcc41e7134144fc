"""Published extractors as the methods study's sources: their names, the frozen features computed
once per task on the model hosts, and LogME's recommendation of one source per task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from tasksim_ray.similarity.logme import logme_score
from tasksim_ray.stages import Run
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.data import SplitData, expert_features
from tasksim_ray.transfer.recommend import recommend_report
from tasksim_ray.transfer.study import Context


def source_names(checkpoints: list[Path]) -> dict[Path, str]:
    """Published checkpoints' names as sources: file names without the extension and without the
    '_'-separated words every one of them starts or ends with (``singletask_``, ``_best_model``)."""
    words = [p.name.removesuffix(".pth.tar").split("_") for p in checkpoints]
    head = tail = 0
    while len(words) > 1 and all(len(w) > head + tail + 1 and w[head] == words[0][head] for w in words):
        head += 1
    while len(words) > 1 and all(len(w) > head + tail + 1 and w[-1 - tail] == words[0][-1 - tail] for w in words):
        tail += 1
    return {p: "_".join(w[head:len(w) - tail]) for p, w in zip(checkpoints, words)}


def frozen_features(run: Run, stage: Any, data: SplitData, store: dict[str, torch.Tensor], extractors: list[Path],
                     trained_last: set[Path]) -> None:
    """Each extractor's frozen features of every task's graphs into the store: ``feat/<name>`` (pooled,
    per graph) and, for extractors whose last layer trains, ``h_in/<name>`` (atoms entering it)."""
    n_atoms = int(store["atom_ptr"][-1])
    ap = store["atom_ptr"]
    feat = {p: torch.zeros(len(data.store_rows), 0) for p in extractors}
    h_in = {p: torch.zeros(n_atoms, 0) for p in trained_last}
    for t in data.targets:
        pos = data.positions(t)
        rows = torch.cat([torch.arange(int(ap[i]), int(ap[i + 1])) for i in pos])
        for p, f in expert_features(run, stage, t, pos, extractors, trained_last).items():
            if not feat[p].shape[1]:
                feat[p] = torch.zeros(len(data.store_rows), f["pooled"].shape[1])
            feat[p][pos] = f["pooled"]
            if p in trained_last:
                if not h_in[p].shape[1]:
                    h_in[p] = torch.zeros(n_atoms, f["h_in"].shape[1])
                h_in[p][rows] = f["h_in"]
    for p in extractors:
        store[f"feat/{p.name}"] = feat[p]
        if p in trained_last:
            store[f"h_in/{p.name}"] = h_in[p]


def source_recommendation(ctx: Context, sources: dict[str, Recipe], cells: list[dict[str, Any]],
                          scratch: str) -> dict[str, Any]:
    """Each published source (by name, its recipe) as a recommendation for each task, judged against
    fine-tuning from it: gain = test MAE improvement over the ``scratch`` recipe (% of its MAE) per
    split seed; the score is LogME of the source's frozen features on the target's own training labels
    (what a user has before training)."""
    data, seeds = ctx.data, ctx.run.cfg.data.split.seeds
    assert isinstance(data, SplitData)
    mae = {(c["target"], c["recipe"], c["fold"]): c["test_mae"] for c in cells}
    store = ray.get(ctx.store_ref)
    start = time.perf_counter()
    scores: dict[str, dict[str, float]] = {}
    for t in data.targets:
        train = [data.cell(t, i, s) for i, s in enumerate(seeds)]
        scores[t] = {name: float(np.mean([logme_score(store[f"feat/{Path(r.checkpoints[0]).name}"][c.train_pos].numpy(),
                                                      c.y_train) for c in train])) for name, r in sources.items()}
    seconds = time.perf_counter() - start

    def gain(t: str, recipe: Recipe, s: int) -> float:
        return 100 * (mae[(t, scratch, s)] - mae[(t, recipe.label, s)]) / mae[(t, scratch, s)]

    per_fold = {t: {name: np.array([gain(t, r, s) for s in seeds]) for name, r in sources.items()}
                for t in data.targets}
    rec = recommend_report({"logme": scores}, per_fold, {}, dict.fromkeys(sources, float("nan")), ctx.run.cfg.seed)
    rec["gain"] = "test MAE improvement over scratch, % of scratch MAE, mean over split seeds"
    labels = {r.label for r in sources.values()}
    mine = [c for c in cells if c["recipe"] in labels]
    rec["cost"] = {"similarity_s": seconds, "transfer_matrix_s": float(sum(c["seconds"] for c in mine)),
                   "transfer_matrix_cells": len(mine), "task_models_s": 0.0}
    return rec
