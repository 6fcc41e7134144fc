import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity import rdm, rsa_matrix, upper_triangle


def _direct_rsa(a: np.ndarray, b: np.ndarray) -> float:
    n = a.shape[0]
    ra = np.array([[1 - pearsonr(a[i], a[j])[0] for j in range(n)] for i in range(n)])
    rb = np.array([[1 - pearsonr(b[i], b[j])[0] for j in range(n)] for i in range(n)])
    iu = np.triu_indices(n, 1)
    return float(spearmanr(ra[iu], rb[iu])[0])


def test_rdm_matches_pairwise_pearson() -> None:
    e = np.random.default_rng(0).normal(size=(12, 7))
    r = rdm(e)
    assert r[3, 5] == pytest.approx(1 - pearsonr(e[3], e[5])[0])
    assert np.allclose(np.diag(r), 0) and np.allclose(r, r.T)


def test_rsa_matches_direct_scipy_computation() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(size=(15, 6))
    embs = {"a": base, "b": base @ rng.normal(size=(6, 9)) + 0.5 * rng.normal(size=(15, 9)),
            "c": rng.normal(size=(15, 4))}
    sim = rsa_matrix(embs)
    names = list(embs)
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            expected = 1.0 if i == j else _direct_rsa(embs[x], embs[y])
            assert sim[i, j] == pytest.approx(expected, abs=1e-10)
    assert np.allclose(sim, sim.T)
    assert sim[0, 1] > sim[0, 2]  # the related embedding is more similar than the unrelated one


def test_rsa_handles_tied_dissimilarities() -> None:
    # duplicated probes give tied RDM entries; Spearman must use average ranks like scipy
    rng = np.random.default_rng(2)
    a = np.repeat(rng.normal(size=(5, 4)), 2, axis=0)
    b = np.repeat(rng.normal(size=(5, 3)), 2, axis=0)
    ua, ub = upper_triangle(rdm(a)), upper_triangle(rdm(b))
    assert len(np.unique(ua.round(12))) < len(ua)
    assert rsa_matrix({"a": a, "b": b})[0, 1] == pytest.approx(spearmanr(ua, ub)[0], abs=1e-10)


@pytest.mark.parametrize("embs, message", [
    ({"a": np.ones((2, 3)) + np.arange(3), "b": np.ones((2, 3)) + np.arange(3)}, "at least 3 probes"),
    ({"a": np.random.rand(5, 3), "b": np.random.rand(6, 3)}, "different probe sets"),
    ({"a": np.random.rand(5, 3), "b": np.where(np.eye(5, 3) > 0, np.nan, 1.0) + np.random.rand(5, 3)},
     "task 'b': 3 probe embedding row(s) are not finite"),
    ({"a": np.random.rand(5, 3), "b": np.vstack([np.full((1, 3), 0.2), np.random.rand(4, 3)])},
     "task 'b': 1 probe embedding row(s) are constant"),
])
def test_bad_embeddings_are_clear_errors(embs: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(TasksimError, match=message.replace("(", r"\(").replace(")", r"\)")):
        rsa_matrix(embs)
