"""CSI (Fréchet), linear CKA, CMD and LogME against direct reference implementations."""

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.optimize import minimize
from scipy.stats import multivariate_normal

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity.cka import cka_matrix
from tasksim_ray.similarity.cmd import cmd_matrix
from tasksim_ray.similarity.frechet import balanced_rows, frechet_distance, frechet_matrix
from tasksim_ray.similarity.inputs import SimilarityInputs
from tasksim_ray.similarity.logme import logme_matrix, logme_score


def _features(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(40, 5)), "b": 0.5 + 2 * rng.normal(size=(25, 5)) @ rng.normal(size=(5, 5)),
            "c": rng.standard_t(3, size=(60, 5))}


def _embeddings(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(30, 6))
    return {"a": base, "b": base @ rng.normal(size=(6, 9)) + 0.3 * rng.normal(size=(30, 9)),
            "c": rng.normal(size=(30, 4))}


def _frechet_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = sqrtm(sa @ sb).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * cross))


def test_frechet_matches_sqrtm_formula() -> None:
    feats = _features()
    dist = frechet_matrix(SimilarityInputs(dataset_features=feats))
    names = list(feats)
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            expected = 0.0 if i == j else _frechet_sqrtm(feats[x], feats[y])
            assert dist[i, j] == pytest.approx(expected, rel=1e-8, abs=1e-8)
            assert frechet_distance(feats[x], feats[y]) == pytest.approx(dist[i, j], rel=1e-8, abs=1e-8)
    assert np.array_equal(dist, dist.T) and np.all(np.diag(dist) == 0)


def test_frechet_identity_symmetry_translation_and_rank_deficiency() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-10)
    shift = np.array([1.0, -2.0, 0.0, 0.5])
    assert frechet_distance(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    # fewer rows than dims: singular covariances still give a finite, non-negative distance
    low = frechet_distance(x[:3, :1] * x[:3, 1:], y[:4, :1] * y[:4, 1:])  # 3 and 4 rows in 3 dims
    assert np.isfinite(low) and low >= 0
    assert frechet_distance(x[:, :1], x[:, :1] + 3.0) == pytest.approx(9.0, rel=1e-8)  # d = 1
    embs = {t: e[:, :4] for t, e in _embeddings().items()}  # on="embeddings" instead of dataset features
    dist = frechet_matrix(SimilarityInputs(embeddings=embs), on="embeddings")
    assert dist[0, 1] == pytest.approx(_frechet_sqrtm(embs["a"], embs["b"]), rel=1e-8)


def test_balanced_rows_caps_atoms_per_structure() -> None:
    groups = np.r_[np.full(500, 7), np.repeat(np.arange(20), 2), [99]]  # one huge crystal, 20 small, 1 single
    rng = np.random.default_rng(5)
    rows = balanced_rows(groups.size, rng, groups=groups, per_group=3)
    ids, counts = np.unique(groups[rows], return_counts=True)
    assert counts[ids == 7][0] == 3 and counts.max() <= 3
    assert set(ids) == set(groups)  # every structure is represented; small ones keep all atoms
    assert counts[ids == 99][0] == 1 and np.all(counts[(ids != 7) & (ids != 99)] == 2)
    capped = balanced_rows(groups.size, rng, sample_per_task=10, groups=groups, per_group=3)
    assert capped.size == 10 and np.bincount(groups[capped]).max() <= 3
    assert balanced_rows(100, rng, sample_per_task=20).size == 20


def test_frechet_groups_keep_a_large_structure_from_dominating_and_sampling_is_seeded() -> None:
    rng = np.random.default_rng(6)
    small = lambda: rng.normal(size=(60, 3))  # 30 molecules x 2 atoms  # noqa: E731
    crystal = rng.normal(loc=5.0, size=(2000, 3))  # one structure with 2000 atoms, far away
    feats = {"a": np.vstack([small(), crystal]), "b": small()}
    groups = {"a": np.r_[np.repeat(np.arange(30), 2), np.full(2000, 30)], "b": np.repeat(np.arange(30), 2)}
    inputs = SimilarityInputs(dataset_features=feats)
    unbalanced = frechet_matrix(inputs)[0, 1]
    balanced = frechet_matrix(inputs, groups=groups, per_group=2, seed=1)
    assert balanced[0, 1] < unbalanced / 5
    assert np.array_equal(balanced, frechet_matrix(inputs, groups=groups, per_group=2, seed=1))  # seeded
    inputs = SimilarityInputs(dataset_features=_features())
    one = frechet_matrix(inputs, sample_per_task=20, seed=3)
    assert np.array_equal(one, frechet_matrix(inputs, sample_per_task=20, seed=3))
    assert not np.array_equal(one, frechet_matrix(inputs, sample_per_task=20, seed=4))


@pytest.mark.parametrize("feats, kwargs, message", [
    ({"a": np.ones((5, 2)), "b": np.where(np.eye(5, 2) > 0, np.inf, 1.0)}, {}, "task 'b': 2 dataset features row"),
    ({"a": np.ones((5, 2)), "b": np.ones((1, 2))}, {}, "task 'b': need at least 2"),
    ({"a": np.ones((5, 2)), "b": np.ones((5, 3))}, {}, "different dimensions"),
    ({"a": np.ones((5, 2)), "b": np.ones((5, 2))}, {"groups": {"a": np.arange(5)}}, "task 'b': no groups"),
    ({"a": np.ones((5, 2)), "b": np.ones((5, 2))}, {"groups": {"a": np.zeros(5), "b": np.zeros(5)}},
     "task 'a': balanced sampling left 1 row"),
])
def test_frechet_errors_name_the_task(feats: dict, kwargs: dict, message: str) -> None:
    with pytest.raises(TasksimError, match=message):
        frechet_matrix(SimilarityInputs(dataset_features=feats), **kwargs)


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    hsic = lambda k, g: np.trace(k @ h @ g @ h) / (n - 1) ** 2  # noqa: E731
    k, g = x @ x.T, y @ y.T
    return float(hsic(k, g) / np.sqrt(hsic(k, k) * hsic(g, g)))


@pytest.mark.parametrize("gram_bytes", [1 << 28, 0])  # stacked Gram matrices, then feature-space products
def test_cka_matches_hsic_definition(gram_bytes: int) -> None:
    embs = _embeddings()
    sim = cka_matrix(SimilarityInputs(embeddings=embs), gram_bytes=gram_bytes)
    names = list(embs)
    for i, x in enumerate(names):
        for j, y in enumerate(names):
            assert sim[i, j] == pytest.approx(1.0 if i == j else _cka_hsic(embs[x], embs[y]), abs=1e-10)
    assert np.array_equal(sim, sim.T) and sim[0, 1] > sim[0, 2]


def test_cka_invariant_to_rotation_and_isotropic_scaling() -> None:
    embs = _embeddings()
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(9, 9)))
    moved = dict(embs, b=3.7 * embs["b"] @ q + 1.5)
    before = cka_matrix(SimilarityInputs(embeddings=embs))
    assert np.allclose(cka_matrix(SimilarityInputs(embeddings=moved)), before, atol=1e-12)


def _cmd_loops(x: np.ndarray, y: np.ndarray, order: int) -> float:
    sx, sy = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(-y))
    def moment(v: np.ndarray, k: int) -> float:
        return float(v.mean()) if k == 1 else float(np.mean([(t - v.mean()) ** k for t in v]))

    return sum(np.sqrt(sum((moment(sx[:, f], k) - moment(sy[:, f], k)) ** 2 for f in range(x.shape[1])))
               for k in range(1, order + 1))


@pytest.mark.parametrize("order", [1, 3, 5])
def test_cmd_matches_explicit_loops(order: int) -> None:
    feats = _features()
    dist = cmd_matrix(SimilarityInputs(dataset_features=feats), order=order, on="dataset_features")
    assert dist[0, 1] == pytest.approx(_cmd_loops(feats["a"], feats["b"], order), rel=1e-10)
    assert dist[2, 1] == pytest.approx(_cmd_loops(feats["c"], feats["b"], order), rel=1e-10)
    assert np.array_equal(dist, dist.T) and np.all(np.diag(dist) == 0)


def test_cmd_on_embeddings_zero_for_identical_sets_and_dims_must_agree() -> None:
    x = np.random.default_rng(8).normal(size=(30, 4))
    dist = cmd_matrix(SimilarityInputs(embeddings={"a": x, "b": x.copy(), "c": x + 1}))
    assert dist[0, 1] == 0 and dist[0, 2] > 0
    with pytest.raises(TasksimError, match=r"same width, got dims \{'a': 6, 'b': 9, 'c': 4\}"):
        cmd_matrix(SimilarityInputs(embeddings=_embeddings()))
    with pytest.raises(TasksimError, match="order must be an integer"):
        cmd_matrix(SimilarityInputs(embeddings={"a": x, "b": x}), order=0)


def _evidence_direct(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """log N(y; 0, I/beta + F F^T/alpha) / n: the marginal likelihood with w integrated out."""
    cov = np.exp(-log_beta) * np.eye(len(y)) + np.exp(-log_alpha) * f @ f.T
    return float(multivariate_normal(np.zeros(len(y)), cov).logpdf(y) / len(y))


def _best_direct(f: np.ndarray, y: np.ndarray) -> float:
    y = (y - y.mean()) / y.std()
    grid = np.linspace(-6, 6, 13)
    start = max(((a, b) for a in grid for b in grid), key=lambda p: _evidence_direct(f, y, *p))
    res = minimize(lambda p: -_evidence_direct(f, y, *p), start, method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000})
    return -float(res.fun)


@pytest.mark.parametrize("n, d", [(40, 5), (12, 20)])  # more probes than dims, and fewer
def test_logme_fixed_point_reaches_the_maximum_evidence(n: int, d: int) -> None:
    rng = np.random.default_rng(9)
    f = rng.normal(size=(n, d))
    y = f @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    assert logme_score(f, y) >= _best_direct(f, y) - 1e-6


def test_logme_prefers_predictive_features_and_matrix_uses_finite_labels() -> None:
    rng = np.random.default_rng(10)
    f_good, f_rand = rng.normal(size=(50, 6)), rng.normal(size=(50, 6))
    y = f_good @ rng.normal(size=6) + 0.1 * rng.normal(size=50)
    assert logme_score(f_good, y) > logme_score(f_rand, y) + 0.5
    y_nan = y.copy()
    y_nan[::5] = np.nan
    z = rng.normal(size=50)
    inputs = SimilarityInputs(embeddings={"good": f_good, "rand": f_rand}, labels={"good": y_nan, "rand": z})
    scores = logme_matrix(inputs)
    keep = np.isfinite(y_nan)
    assert scores[0, 0] == pytest.approx(logme_score(f_good[keep], y_nan[keep]), rel=1e-12)
    assert scores[1, 0] == pytest.approx(logme_score(f_rand[keep], y_nan[keep]), rel=1e-12)
    assert scores[0, 1] == pytest.approx(logme_score(f_good, z), rel=1e-12)
    assert scores[0, 0] > scores[1, 0]


@pytest.mark.parametrize("labels, message", [
    ({"a": np.arange(30.0)}, "task 'b': no probe labels"),
    ({"a": np.arange(30.0), "b": np.r_[1.0, 2.0, np.full(28, np.nan)]}, "task 'b': 2 finite probe label"),
    ({"a": np.arange(30.0), "b": np.ones(30)}, "task 'b': the labels are constant"),
    ({"a": np.arange(30.0), "b": np.arange(29.0)}, r"task 'b': probe labels have shape \(29,\)"),
])
def test_logme_label_errors_name_the_task(labels: dict, message: str) -> None:
    embs = {t: e for t, e in _embeddings().items() if t in "ab"}
    with pytest.raises(TasksimError, match=message):
        logme_matrix(SimilarityInputs(embeddings=embs, labels=labels))


def test_non_finite_embeddings_name_the_task() -> None:
    embs = _embeddings()
    embs["c"] = embs["c"].copy()
    embs["c"][4, 1] = np.nan
    inputs = SimilarityInputs(embeddings=embs, labels={t: np.arange(30.0) for t in embs})
    for metric in (cka_matrix, logme_matrix):
        with pytest.raises(TasksimError, match="task 'c': 1 probe embedding row"):
            metric(inputs)
