"""Linear CKA (Kornblith et al., 2019) between task models' embeddings of the shared probe set.

With column-centred X (M, d_x) and Y (M, d_y) embedding the same M probes,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),

which equals HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for the linear Gram matrices K = X X^T,
L = Y Y^T, since ||Y^T X||_F^2 = <X X^T, Y Y^T>_F. It lies in [0, 1] and is invariant to
orthogonal transforms and isotropic scaling of either embedding, and it compares embeddings of
different widths.

All pairs: when the T centred M x M Gram matrices fit in memory, one product of their flattened
stack gives every numerator at once; otherwise each pair uses the feature-space product Y^T X.
"""

from __future__ import annotations

import numpy as np

from tasksim_ray.similarity.inputs import SimilarityInputs, check_embeddings

GRAM_BYTES = 1 << 28  # 256 MiB: above this the T stacked M x M Gram matrices are not built


def _centred_unit(x: np.ndarray) -> np.ndarray:
    """Column-centred and scaled to unit Frobenius norm (CKA ignores isotropic scale)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    return x / np.linalg.norm(x)


def _cross_products(xs: list[np.ndarray], gram_bytes: int = GRAM_BYTES) -> np.ndarray:
    """[i, j] = ||X_j^T X_i||_F^2 for the centred embeddings xs, all pairs."""
    t, m = len(xs), xs[0].shape[0]
    if t * m * m * 8 <= gram_bytes:
        grams = np.stack([(x @ x.T).ravel() for x in xs])
        return grams @ grams.T
    out = np.empty((t, t))
    for i in range(t):
        for j in range(i, t):
            out[i, j] = out[j, i] = np.sum((xs[j].T @ xs[i]) ** 2)
    return out


def cka_matrix(inputs: SimilarityInputs, *, gram_bytes: int = GRAM_BYTES) -> np.ndarray:
    """T x T linear CKA (symmetric, unit diagonal, in [0, 1]) between the tasks' probe embeddings."""
    check_embeddings(inputs.embeddings)
    xs = [_centred_unit(e) for e in inputs.embeddings.values()]
    hsic = _cross_products(xs, gram_bytes)
    norms = np.sqrt(np.diag(hsic))
    sim = hsic / np.outer(norms, norms)
    sim = np.clip((sim + sim.T) / 2, 0.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim
