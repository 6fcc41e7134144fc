"""LogME (You et al., ICML 2021), regression form: how well one task model's features explain
another task's labels, as the maximum evidence of Bayesian linear regression on those features.

Model: w ~ N(0, alpha^-1 I_D), y | F, w ~ N(F w, beta^-1 I_n). With A = alpha I + beta F^T F and
m = beta A^-1 F^T y, the log evidence is

    L = n/2 log beta + D/2 log alpha - n/2 log 2pi - beta/2 |F m - y|^2 - alpha/2 m^T m - 1/2 log|A|.

The paper maximises it with MacKay's fixed point: gamma = sum_i beta s_i / (alpha + beta s_i),
alpha <- gamma / m^T m, beta <- (n - gamma) / |F m - y|^2, where s_i are the eigenvalues of
F^T F. With the thin SVD F = U diag(sigma) V^T and u = U^T y, every quantity is O(rank) per step:
F m - y has components -alpha u_i / (alpha + beta s_i) in U's span plus y's part outside it, and
the D - r zero eigenvalues cancel between D/2 log alpha and 1/2 log|A|. The score is max L / n.

Matrix entry [s, t] = LogME(task s's model's probe embeddings, task t's probe labels), using
only the probes where task t's label is finite, with y standardised. It is not symmetric.
"""

from __future__ import annotations

import numpy as np

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity.inputs import SimilarityInputs, check_embeddings

MIN_LABELS = 3


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero eigenvalues s of F^T F and the matching left singular vectors U of F."""
    u, sigma, _ = np.linalg.svd(np.asarray(features, dtype=np.float64), full_matrices=False)
    keep = sigma > sigma.max(initial=0.0) * max(features.shape) * np.finfo(np.float64).eps
    return sigma[keep] ** 2, u[:, keep]


def _max_evidence(s: np.ndarray, proj: np.ndarray, y_sq: float, n: int,
                  tol: float = 1e-8, max_iter: int = 1000) -> float:
    """max over (alpha, beta) of L / n, given s, proj = U^T y and |y|^2."""
    outside = max(y_sq - float(proj @ proj), 0.0)  # |y|^2 outside the span of F

    def terms(alpha: float, beta: float) -> tuple[np.ndarray, float, float]:
        """alpha + beta s, m^T m and |F m - y|^2."""
        denom = alpha + beta * s
        m_sq = float(np.sum((beta * np.sqrt(s) * proj / denom) ** 2))
        return denom, m_sq, float(np.sum((alpha * proj / denom) ** 2)) + outside

    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        denom, m_sq, res_sq = terms(alpha, beta)
        gamma = float(np.sum(beta * s / denom))
        new_alpha = gamma / m_sq if m_sq > 0 else alpha  # m = 0: y has no part in F's span
        new_beta = (n - gamma) / res_sq
        done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if done:
            break
    denom, m_sq, res_sq = terms(alpha, beta)
    evidence = (n * np.log(beta) + s.size * np.log(alpha) - n * np.log(2 * np.pi)
                - beta * res_sq - alpha * m_sq - np.sum(np.log(denom))) / 2
    return float(evidence / n)


def _standardised(y: np.ndarray, what: str) -> np.ndarray:
    std = y.std()
    if not std > 0:
        raise TasksimError(f"{what}: the labels are constant, LogME needs a varying target")
    return (y - y.mean()) / std


def logme_score(features: np.ndarray, y: np.ndarray) -> float:
    """LogME / n of features (n, D) for the real target y (n,), standardised here."""
    features, y = np.asarray(features, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if features.ndim != 2 or y.shape != (features.shape[0],):
        raise TasksimError(f"LogME needs features (n, D) and labels (n,), got {features.shape} and {y.shape}")
    if y.size < MIN_LABELS:
        raise TasksimError(f"LogME needs at least {MIN_LABELS} labels, got {y.size}")
    if not (np.isfinite(features).all() and np.isfinite(y).all()):
        raise TasksimError("LogME: features or labels contain non-finite values")
    y = _standardised(y, "LogME")
    s, u = _spectrum(features)
    return _max_evidence(s, u.T @ y, float(y @ y), y.size)


def _task_labels(inputs: SimilarityInputs, n_probes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task: the mask of probes with a finite label, and those labels standardised."""
    out = {}
    for task in inputs.names:
        if task not in inputs.labels:
            raise TasksimError(f"task '{task}': no probe labels, LogME needs them")
        y = np.asarray(inputs.labels[task], dtype=np.float64)
        if y.shape != (n_probes,):
            raise TasksimError(f"task '{task}': probe labels have shape {y.shape}, expected ({n_probes},)")
        mask = np.isfinite(y)
        if mask.sum() < MIN_LABELS:
            raise TasksimError(f"task '{task}': {int(mask.sum())} finite probe label(s), LogME needs at least "
                               f"{MIN_LABELS}")
        out[task] = mask, _standardised(y[mask], f"task '{task}'")
    return out


def logme_matrix(inputs: SimilarityInputs) -> np.ndarray:
    """T x T LogME: [s, t] = how well task s's model features explain task t's labels (not symmetric)."""
    n_probes = check_embeddings(inputs.embeddings)
    labels = _task_labels(inputs, n_probes)
    t = len(labels)
    scores = np.empty((t, t))
    for i, feats in enumerate(inputs.embeddings.values()):
        spectra: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # one SVD per distinct label mask
        for j, (mask, y) in enumerate(labels.values()):
            key = np.packbits(mask).tobytes()
            if key not in spectra:
                spectra[key] = _spectrum(feats[mask])
            s, u = spectra[key]
            scores[i, j] = _max_evidence(s, u.T @ y, float(y @ y), y.size)
    return scores
