import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity import SimilarityInputs
from tasksim_ray.similarity.rsa import rdm, rdm_upper, rsa_matrix


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
    sim = rsa_matrix(SimilarityInputs(embeddings=embs))
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
    ua, ub = rdm_upper(a), rdm_upper(b)
    assert len(np.unique(ua.round(12))) < len(ua)
    assert rsa_matrix(SimilarityInputs(embeddings={"a": a, "b": b}))[0, 1] == pytest.approx(spearmanr(ua, ub)[0], abs=1e-10)


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
        rsa_matrix(SimilarityInputs(embeddings=embs))


@pytest.mark.parametrize("packed_max", [1 << 24, 64])  # one packed-key sort; value-range groups of 32 sorted apart
def test_exact_ranks_match_scipy_including_ties_and_signed_zero(monkeypatch: pytest.MonkeyPatch,
                                                                 packed_max: int) -> None:
    from scipy.stats import rankdata

    from tasksim_ray.similarity import rsa
    from tasksim_ray.similarity.rsa import doubled_centred_ranks

    monkeypatch.setattr(rsa, "PACKED_MAX", packed_max)
    monkeypatch.setattr(rsa, "CHUNK", 7)  # many chunks, and tied runs across chunk borders
    monkeypatch.setattr(rsa, "STEP", 5)  # the key arithmetic's steps, and their borders
    rng = np.random.default_rng(5)
    cases = [rng.random(3000), np.repeat(rng.random(200), 4), np.array([0.0, -0.0, 1.0, 1.0, -1e-17, 3.0]),
             np.full(9, 2.5), rng.integers(0, 4, 500).astype(float), 1 + rng.random(20000) * 1e-9,
             np.array([1.0, 1.0, 2.0, 2.0, 2.0, 0.5]), np.array([5.0]),
             # a span wider than the packed key's value bits (dropped low bits), infinities and negatives
             rng.standard_normal(4000) * 10.0 ** rng.uniform(-300, 300, 4000), np.array([np.inf, -np.inf, 0.0, 1.0])]
    for v in cases:
        expected = 2 * rankdata(v) - (v.size + 1)
        assert np.array_equal(doubled_centred_ranks(v).astype(np.int64), expected.astype(np.int64))


@pytest.mark.parametrize("comparison", ["spearman", "pearson", "kendall"])
def test_rdm_comparisons_match_scipy(comparison: str) -> None:
    from scipy.stats import kendalltau

    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 4))
    ua, ub = rdm_upper(a), rdm_upper(b)
    ref = {"spearman": spearmanr, "pearson": pearsonr, "kendall": kendalltau}[comparison](ua, ub)[0]
    got = rsa_matrix(SimilarityInputs(embeddings={"a": a, "b": b}), comparison)[0, 1]
    assert got == pytest.approx(ref, abs=1e-10)


def test_rsa_invariant_to_centring_preserving_rotation_and_scaling() -> None:
    """Pearson RDMs centre each probe over features, so they (and RSA) are invariant to positive
    scaling and to rotations that fix the all-ones direction (feature permutations among them);
    a general rotation changes the row means and is not an invariance of this definition."""
    rng = np.random.default_rng(7)
    d = 6
    a, b = rng.normal(size=(30, d)), rng.normal(size=(30, d))
    basis, _ = np.linalg.qr(np.column_stack([np.ones(d), rng.normal(size=(d, d - 1))]))
    comp = basis[:, 1:]  # orthonormal basis of the complement of the ones vector
    r, _ = np.linalg.qr(rng.normal(size=(d - 1, d - 1)))
    q = np.outer(np.ones(d), np.ones(d)) / d + comp @ r @ comp.T
    assert np.allclose(q @ q.T, np.eye(d)) and np.allclose(q @ np.ones(d), np.ones(d))
    base = rsa_matrix(SimilarityInputs(embeddings={"a": a, "b": b}))[0, 1]
    moved = rsa_matrix(SimilarityInputs(embeddings={"a": 3.0 * a @ q, "b": b[:, rng.permutation(d)]}))[0, 1]
    assert moved == pytest.approx(base, abs=1e-10)
