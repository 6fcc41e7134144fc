"""Fine-tuning objectives for transfer from pretraining tasks.

A multi-task loss that tolerates missing labels, and the two regularisers that keep a fine-tuned model close to what
it learned in pretraining: L2-SP (Li et al. 2018) pulls the transferred weights towards their pretrained values, and
batch spectral shrinkage (BSS, Chen et al. 2019) damps the feature directions that carry little signal and are the ones
most likely to transfer negatively. A 0/1 target trains with the logistic loss and is scored by ROC-AUC and accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn


def masked_mse(pred: Tensor, y: Tensor) -> Tensor:
    """Mean squared error over the labels that are present (``y`` is NaN where a sample lacks a task's label).

    Every present label weighs the same, so a task with more labels contributes more; missing entries get exactly zero
    gradient. With no label present the result is a zero that still belongs to ``pred``'s graph, so ``backward`` works.
    """
    if pred.shape != y.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but y has shape {tuple(y.shape)}")
    present = ~torch.isnan(y)
    # torch.where, not multiplication by the mask: NaN * 0 is NaN, and it would reach the loss and the gradient
    diff = torch.where(present, pred - y, 0.0)
    # clamp instead of a branch on the count: no host sync, and with no label the result is a zero still in the graph
    return diff.pow(2).sum() / present.sum().clamp(min=1)


def masked_l1(pred: Tensor, y: Tensor) -> Tensor:
    """Mean absolute error over the labels that are present: the multi-property loss of the ALIGNN PT/FT
    paper (its Eq. 1), which, unlike the squared error, does not let a few large residuals dominate."""
    if pred.shape != y.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)} but y has shape {tuple(y.shape)}")
    present = ~torch.isnan(y)
    return torch.where(present, pred - y, 0.0).abs().sum() / present.sum().clamp(min=1)


def reference_weights(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, Tensor]:
    """Detached copies of the named parameters (all if ``names`` is None): the pretrained w0 that L2-SP pulls towards.

    Take them right after loading the pretrained weights and before adding or training anything, so that later
    updates cannot change them.
    """
    params = dict(model.named_parameters())
    selected = list(params) if names is None else list(names)
    missing = [name for name in selected if name not in params]
    if missing:
        raise KeyError(f"not parameters of the model: {missing}")
    return {name: params[name].detach().clone() for name in selected}


def l2sp_penalty(model: nn.Module, reference: dict[str, Tensor]) -> Tensor:
    """Sum over the parameters named in ``reference`` of ||w - w0||^2; the caller multiplies by lambda.

    Only transferred weights are penalised: parameters missing from ``reference`` (the new head) have no pretrained
    value to stay near and get no gradient from this term.
    """
    params = dict(model.named_parameters())
    missing = [name for name in reference if name not in params]
    if missing:
        raise KeyError(f"reference names that are not parameters of the model: {missing}")
    device = next(iter(params.values())).device if params else None
    total = torch.zeros((), device=device)
    for name, w0 in reference.items():
        w = params[name]
        total = total + (w - w0.to(device=w.device, dtype=w.dtype)).pow(2).sum()
    return total


def bss_penalty(features: Tensor, k: int) -> Tensor:
    """Sum of the squares of the ``k`` smallest singular values of a (batch, dim) feature matrix (BSS).

    Shrinking the weakest spectral components suppresses the feature directions that fine-tuning cannot estimate well
    from a small batch; ``k`` beyond min(batch, dim) uses every singular value.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be a (batch, dim) matrix, got shape {tuple(features.shape)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    singular = torch.linalg.svdvals(features)  # descending
    return singular[max(singular.numel() - k, 0) :].pow(2).sum()


def roc_auc(scores: np.ndarray, y: np.ndarray) -> float:
    """ROC-AUC of ``scores`` for 0/1 labels ``y``: the Mann-Whitney probability that a positive outranks
    a negative (ties count one half); NaN when one class is absent."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=float)
    pos, n_pos = y == 1, int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=float))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_scores(scores: np.ndarray, y: np.ndarray, threshold: float = 0.0) -> dict[str, float]:
    """What a 0/1 target is scored by: ROC-AUC, accuracy (score above ``threshold`` = 1) and the
    error the tables sort by, 1 - ROC-AUC (lower is better, as an MAE)."""
    auc = roc_auc(scores, y)
    acc = float(np.mean((np.asarray(scores) > threshold) == (np.asarray(y) == 1)))
    return {"test_auc": auc, "test_acc": acc, "test_mae": 1.0 - auc}
