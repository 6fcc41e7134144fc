from itertools import combinations

import numpy as np
import pytest

from tasksim_ray.similarity.select import select_subset


def _brute_force(sim: np.ndarray, thr: float) -> tuple[int, float]:
    n = len(sim)
    cov = (sim >= thr) & ~np.eye(n, dtype=bool)
    targets = [t for t in range(n) if cov[t].any()]
    for k in range(1, n + 1):
        scores = [sum(max(sim[t, s] for s in subset if cov[t, s]) for t in targets)
                  for subset in combinations(range(n), k)
                  if all(cov[t, list(subset)].any() for t in targets)]
        if scores:
            return k, max(scores)
    raise AssertionError("unreachable")


def test_smallest_cover_with_best_total_similarity_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(3, 9))
        a = rng.uniform(-0.2, 1, (n, n))
        sim = (a + a.T) / 2
        np.fill_diagonal(sim, 1.0)
        thr = float(rng.uniform(0.1, 0.6))
        names = [f"t{i}" for i in range(n)]
        sel = select_subset(names, sim, thr)
        cov = (sim >= thr) & ~np.eye(n, dtype=bool)
        if not cov.any():
            assert sel.subset == []
            continue
        k, best = _brute_force(sim, thr)
        assert len(sel.subset) == k
        assert sel.total_similarity == pytest.approx(best)
        for t, name in enumerate(names):  # every coverable task has another subset member >= thr
            if name not in sel.uncoverable:
                assert any(sim[t, names.index(s)] >= thr for s in sel.subset if s != name)


def test_target_needs_a_task_other_than_itself_and_ties_prefer_similarity() -> None:
    names = ["a", "b", "c"]
    sim = np.array([[1.0, 0.9, 0.6],
                    [0.9, 1.0, 0.7],
                    [0.6, 0.7, 1.0]])
    sel = select_subset(names, sim, 0.5)
    # one task cannot cover itself, so two are needed; {a, b} scores 0.9+0.9+0.7 (best)
    assert sel.subset == ["a", "b"]
    assert sel.total_similarity == pytest.approx(2.5)
    assert sel.covered_by["c"] == ["a", "b"]


def test_uncoverable_tasks_are_reported() -> None:
    sim = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.0], [0.1, 0.0, 1.0]])
    sel = select_subset(["a", "b", "c"], sim, 0.5)
    assert sel.uncoverable == ["c"]
    assert sel.subset == ["a", "b"]
