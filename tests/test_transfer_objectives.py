"""Fine-tuning objectives and pretraining-budget sampling (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tasksim_ray.config.budget import resolve_splits, task_counts
from tasksim_ray.training.objectives import bss_penalty, l2sp_penalty, masked_mse, reference_weights
from tasksim_ray.training.sampler import BudgetSampler


def _labels_with_gaps(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    y[torch.rand(12, 4, generator=gen) < 0.4] = float("nan")
    y[:, 3] = float("nan")  # one task with no label at all
    return pred, y


def test_masked_mse_sums_per_task_errors_over_present_labels() -> None:
    pred, y = _labels_with_gaps()
    per_task, present = 0.0, 0
    for t in range(y.shape[1]):
        keep = ~torch.isnan(y[:, t])
        per_task += float(((pred[keep, t] - y[keep, t]) ** 2).sum())
        present += int(keep.sum())
    assert 0 < present < y.numel()
    assert masked_mse(pred, y).item() == pytest.approx(per_task / present)


def test_masked_mse_is_plain_mse_without_gaps() -> None:
    pred, y = torch.randn(8, 3), torch.randn(8, 3)
    assert torch.allclose(masked_mse(pred, y), nn.functional.mse_loss(pred, y))


def test_masked_mse_gradient_is_zero_on_missing_labels() -> None:
    pred, y = _labels_with_gaps()
    pred.requires_grad_(True)
    masked_mse(pred, y).backward()
    missing = torch.isnan(y)
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[missing] == 0).all()
    assert (pred.grad[~missing] != 0).all()


def test_masked_mse_without_labels_is_a_differentiable_zero() -> None:
    pred = torch.randn(3, 2, requires_grad=True)
    loss = masked_mse(pred, torch.full((3, 2), float("nan")))
    loss.backward()
    assert loss.item() == 0 and (pred.grad == 0).all()


def test_masked_mse_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        masked_mse(torch.zeros(3, 2), torch.zeros(3, 1))


def _pretrained_with_head() -> tuple[nn.Sequential, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4))
    reference = reference_weights(body)
    return nn.Sequential(*body, nn.Linear(4, 2)), reference  # the new head is layer 3


def test_l2sp_is_zero_at_the_reference_and_positive_after_a_perturbation() -> None:
    model, reference = _pretrained_with_head()
    assert set(reference) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert l2sp_penalty(model, reference).item() == 0
    with torch.no_grad():
        model[0].weight.add_(0.1)
    assert l2sp_penalty(model, reference).item() == pytest.approx(0.01 * model[0].weight.numel(), rel=1e-4)


def test_l2sp_gradient_pulls_towards_the_reference_and_leaves_the_head_alone() -> None:
    model, reference = _pretrained_with_head()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    l2sp_penalty(model, reference).backward()
    params = dict(model.named_parameters())
    for name, w0 in reference.items():
        assert torch.allclose(params[name].grad, 2 * (params[name].detach() - w0))
    assert model[3].weight.grad is None and model[3].bias.grad is None
    before = l2sp_penalty(model, reference).item()
    with torch.no_grad():
        for name in reference:
            params[name].sub_(0.1 * params[name].grad)
    assert l2sp_penalty(model, reference).item() < before


def test_reference_weights_are_detached_copies_and_names_are_checked() -> None:
    model, _ = _pretrained_with_head()
    reference = reference_weights(model, ["0.weight"])
    assert list(reference) == ["0.weight"] and not reference["0.weight"].requires_grad
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert not torch.equal(reference["0.weight"], model[0].weight)
    with pytest.raises(KeyError, match="9.weight"):
        reference_weights(model, ["9.weight"])
    with pytest.raises(KeyError, match="9.weight"):
        l2sp_penalty(model, {"9.weight": torch.zeros(1)})


@pytest.mark.parametrize("k", [1, 3, 50])
def test_bss_matches_numpy_svd(k: int) -> None:
    features = torch.randn(10, 6, dtype=torch.float64, requires_grad=True)
    singular = np.linalg.svd(features.detach().numpy(), compute_uv=False)
    expected = float((np.sort(singular)[:k] ** 2).sum())
    penalty = bss_penalty(features, k)
    assert penalty.item() == pytest.approx(expected)
    penalty.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_bss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="k must"):
        bss_penalty(torch.randn(4, 3), 0)
    with pytest.raises(ValueError, match="batch, dim"):
        bss_penalty(torch.randn(4), 1)


def test_resolve_splits_each_mode() -> None:
    assert resolve_splits(1000, 250, None, None) == [(250, 4)]
    assert resolve_splits(1000, None, 8, None) == [(125, 8)]
    assert resolve_splits(1000, None, None, [(1000, 1), (100, 10)]) == [(1000, 1), (100, 10)]


def test_resolve_splits_errors() -> None:
    with pytest.raises(ValueError, match="budget 1000 is not divisible by samples 300"):
        resolve_splits(1000, 300, None, None)
    with pytest.raises(ValueError, match="budget 1000 is not divisible by epochs 3"):
        resolve_splits(1000, None, 3, None)
    with pytest.raises(ValueError, match="is not the budget 1000"):
        resolve_splits(1000, None, None, [(100, 10), (300, 3)])
    with pytest.raises(ValueError, match="exactly one"):
        resolve_splits(1000, 100, 10, None)
    with pytest.raises(ValueError, match="exactly one"):
        resolve_splits(1000, None, None, None)


def test_task_counts_schemes() -> None:
    sizes = [100, 300, 600]
    assert task_counts(90, sizes).tolist() == [30, 30, 30]
    assert task_counts(100, sizes).tolist() == [34, 33, 33]  # remainder to the lower index on ties
    assert task_counts(100, sizes, "proportional").tolist() == [10, 30, 60]
    assert task_counts(100, sizes, "temperature", temperature=1.0).tolist() == [10, 30, 60]
    weights = np.array(sizes) ** 0.5
    # quotas 192.99, 334.27, 472.74: the two remaining samples go to the largest fractions
    assert task_counts(1000, sizes, "temperature", temperature=2.0).tolist() == [193, 334, 473]
    assert np.allclose(task_counts(1000, sizes, "temperature", 2.0), 1000 * weights / weights.sum(), atol=1)
    assert task_counts(99, sizes, "temperature", temperature=1e6).tolist() == [33, 33, 33]
    for scheme in ("uniform", "proportional", "temperature"):
        for n in (0, 1, 7, 101, 997):
            counts = task_counts(n, sizes, scheme, temperature=3.0)
            assert counts.sum() == n and counts.dtype.kind == "i" and (counts >= 0).all()
    with pytest.raises(ValueError, match="uniform, proportional, temperature"):
        task_counts(10, sizes, "balanced")


def _pools() -> list[np.ndarray]:
    return [np.arange(0, 10), np.arange(10, 40), np.arange(40, 100)]


def test_budget_sampler_draws_each_tasks_share_from_its_pool() -> None:
    pools = _pools()
    sampler = BudgetSampler(pools, 30, scheme="proportional", seed=1)
    assert len(sampler) == 30 and sampler.counts.tolist() == [3, 9, 18]
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert len(epoch) == 30 and len(set(epoch)) == 30
        drawn = np.array(epoch)
        assert [int(np.isin(drawn, pool).sum()) for pool in pools] == sampler.counts.tolist()
    assert first != second
    assert list(BudgetSampler(pools, 30, scheme="proportional", seed=1)) == first


def test_budget_sampler_cycles_a_small_pool_evenly() -> None:
    pools = [np.array([5, 6, 7]), np.arange(100, 200)]
    sampler = BudgetSampler(pools, 16)  # uniform: 8 from a pool of 3
    drawn = np.array(list(sampler))
    small = drawn[np.isin(drawn, pools[0])]
    assert small.size == 8 and sorted(np.bincount(small - 5).tolist()) == [2, 3, 3]
    assert np.isin(drawn, pools[1]).sum() == 8 and len(set(drawn[drawn >= 100].tolist())) == 8


def test_budget_sampler_unique_seen() -> None:
    sampler = BudgetSampler([np.array([0, 1]), np.arange(2, 50)], 4, seed=3)  # 2 + 2 per epoch
    assert sampler.unique_seen() == 0
    seen: set[int] = set()
    for _ in range(3):
        seen.update(sampler)
        assert sampler.unique_seen() == len(seen)
    partial = iter(sampler)
    seen.add(next(partial))
    assert sampler.unique_seen() == len(seen)


def test_budget_sampler_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        BudgetSampler([np.arange(3), np.array([], dtype=int)], 4)
    with pytest.raises(ValueError, match="n_per_epoch"):
        BudgetSampler([np.arange(3)], 0)


def test_masked_l1_is_the_mean_absolute_error_over_present_labels() -> None:
    from tasksim_ray.training.objectives import masked_l1

    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    y = torch.tensor([[2.0, float("nan")], [1.0, 5.5]])
    loss = masked_l1(pred, y)
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    loss.backward()
    assert pred.grad is not None and pred.grad[0, 1].item() == 0.0  # a missing label gets no gradient
