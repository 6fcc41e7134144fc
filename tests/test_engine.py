"""The blocked, incremental RSA engine and bootstrap CIs, on a real local Ray."""

from pathlib import Path

import numpy as np
import pytest

from tasksim_ray.similarity import SimilarityInputs
from tasksim_ray.similarity.bootstrap import bootstrap_rsa
from tasksim_ray.similarity.engine import RSAEngine
from tasksim_ray.similarity.rsa import rsa_matrix

pytestmark = pytest.mark.usefixtures("ray_local")


def _embeddings(t: int = 5, m: int = 120) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(m, 6))
    return {f"task{i}": latent @ rng.normal(size=(6, 10)) + (0.3 + i) * rng.normal(size=(m, 10)) for i in range(t)}


@pytest.mark.parametrize("comparison", ["spearman", "pearson"])
def test_blocked_equals_unblocked(tmp_path: Path, comparison: str) -> None:
    embs = _embeddings()
    engine = RSAEngine(tmp_path, comparison, block_bytes=4096)  # many tiny blocks
    engine.ensure_vectors(embs)
    blocked = engine.matrix(list(embs))
    full = rsa_matrix(SimilarityInputs(embeddings=embs), comparison)
    assert np.abs(blocked - full).max() < 1e-12


def test_adding_a_task_computes_only_its_row_and_column(tmp_path: Path) -> None:
    embs = _embeddings(6)
    first = {k: embs[k] for k in list(embs)[:5]}
    RSAEngine(tmp_path).ensure_vectors(first)
    RSAEngine(tmp_path).matrix(list(first))
    events: list[tuple[str, bool]] = []
    engine = RSAEngine(tmp_path)
    engine.ensure_vectors(embs, on_done=lambda key, cached: events.append((key, cached)))
    assert [k for k, cached in events if not cached] == ["task5"]
    known_pairs = set(engine._pairs)
    grown = engine.matrix(list(embs))
    new_pairs = set(engine._pairs) - known_pairs
    assert new_pairs == {engine._pair("task5", k) for k in embs if k != "task5"}
    assert np.abs(grown - rsa_matrix(SimilarityInputs(embeddings=embs))).max() < 1e-12


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    embs = _embeddings(3, 80)
    a = bootstrap_rsa(embs, n_boot=60, seed=1)
    b = bootstrap_rsa(embs, n_boot=60, seed=1)
    assert np.array_equal(a.lower, b.lower) and np.array_equal(a.upper, b.upper)
    point = rsa_matrix(SimilarityInputs(embeddings=embs))
    iu = np.triu_indices(3, 1)
    assert np.all(a.lower[iu] <= point[iu]) and np.all(point[iu] <= a.upper[iu])
    assert np.all(a.upper[iu] - a.lower[iu] > 0)
    assert not np.array_equal(bootstrap_rsa(embs, n_boot=60, seed=2).lower, a.lower)
