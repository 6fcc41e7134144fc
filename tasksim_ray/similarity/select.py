"""Choosing a small, diverse pretraining subset from a task-similarity matrix.

Task s covers task t when s != t and sim(t, s) >= threshold. We want the smallest subset that
covers every task (every target has a similar *other* task to pretrain on); among subsets of that
size, ties go to the largest total similarity sum_t max_{s in S, s != t} sim(t, s). Tasks that no
other task covers are reported and left out of the requirement.

Both steps are exact integer programs solved by HiGHS through ``scipy.optimize.milp``: first a
set cover (minimum size k), then, with |S| = k fixed, a facility-location program that assigns
each task to its most similar covering member of S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from tasksim_ray.errors import TasksimError


@dataclass(frozen=True)
class Selection:
    subset: list[str]
    threshold: float
    uncoverable: list[str]
    total_similarity: float
    covered_by: dict[str, list[str]]


def _solve(c: np.ndarray, constraints: list[LinearConstraint]) -> np.ndarray:
    res = milp(c, constraints=constraints, integrality=np.ones_like(c), bounds=Bounds(0, 1))
    if not res.success:
        raise TasksimError(f"subset selection failed: {res.message}")
    return np.round(res.x).astype(int)


def select_subset(names: list[str], sim: np.ndarray, threshold: float) -> Selection:
    n = len(names)
    covers = (sim >= threshold) & ~np.eye(n, dtype=bool)  # covers[t, s]: s covers t
    targets = [t for t in range(n) if covers[t].any()]
    uncoverable = [names[t] for t in range(n) if t not in targets]
    if not targets:
        return Selection([], threshold, uncoverable, 0.0, {name: [] for name in names})

    # phase 1: minimum set cover over x_s
    x = _solve(np.ones(n), [LinearConstraint(covers[targets].astype(float), lb=1)])
    k = int(x.sum())

    # phase 2: variables [x_s (n), y_ts (len(targets) * n)]; y_ts = 1 assigns t to member s
    pairs = [(i, s) for i, t in enumerate(targets) for s in range(n) if covers[t, s]]
    nv = n + len(pairs)
    c = np.zeros(nv)
    size_row = np.zeros(nv)
    size_row[:n] = 1
    assign = np.zeros((len(targets), nv))
    link = np.zeros((len(pairs), nv))
    for j, (i, s) in enumerate(pairs):
        c[n + j] = -sim[targets[i], s]
        assign[i, n + j] = 1
        link[j, n + j], link[j, s] = 1, -1  # y_ts <= x_s
    sol = _solve(c, [LinearConstraint(size_row, k, k), LinearConstraint(assign, 1, 1),
                     LinearConstraint(link, ub=0)])
    subset = [s for s in range(n) if sol[s]]
    score = float(sum(max(sim[t, s] for s in subset if covers[t, s]) for t in targets))
    covered_by = {names[t]: [names[s] for s in subset if covers[t, s]] for t in range(n)}
    return Selection([names[s] for s in subset], threshold, uncoverable, score, covered_by)
