"""Fine-tuning strategies, regularisers in training, and the MoE gate (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasksim_ray.config import FinetuneConfig, MoEConfig, RegularizerConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.molecule import smiles_to_graph
from tasksim_ray.models.dmpnn import DMPNN
from tasksim_ray.models.heads import mlp_head
from tasksim_ray.models.moe import MixtureOfExperts, initial_theta, top_k_gates
from tasksim_ray.training.finetune import finetune_options, moe_options
from tasksim_ray.training.loop import fit

SMILES = ["CCO", "CC(=O)O", "c1ccccc1", "CCN", "OCC#N", "CC(C)C", "C1CCCCC1", "CCOC", "NC=O", "CCCl",
          "c1ccncc1", "CC=C"]


def _graphs_and_y() -> tuple[list, np.ndarray]:
    graphs = [smiles_to_graph(s) for s in SMILES]
    y = np.array([g.num_nodes * 0.7 + 0.1 * i for i, g in enumerate(graphs)])
    return graphs, y


def _pretrained(seed: int = 0) -> DMPNN:
    torch.manual_seed(seed)
    model = DMPNN(hidden_dim=16, depth=2, ffn_hidden_dim=8)
    model.reset_head(1)
    return model


def _train(model: torch.nn.Module, cfg: FinetuneConfig, pretrained: bool = True) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    graphs, y = _graphs_and_y()
    opts = finetune_options(model, cfg, pretrained)
    fit(model, graphs, y, graphs[:4], y[:4], opts, seed=0, mean=float(y.mean()), std=float(y.std()))
    return before


def _changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


HEAD = {"ffn.0.weight", "ffn.0.bias", "ffn.3.weight", "ffn.3.bias"}


@pytest.mark.parametrize(("strategy", "layers", "expected"), [
    ("full", [], {"W_i.weight", "W_h.weight", "W_o.weight", "W_o.bias"} | HEAD),
    ("head", [], HEAD),
    ("last", [], {"W_o.weight", "W_o.bias"} | HEAD),
    ("layers", ["W_h.*", "W_o.bias"], {"W_h.weight", "W_o.bias"} | HEAD),
])
def test_strategy_trains_exactly_its_parameters(strategy: str, layers: list[str], expected: set[str]) -> None:
    model = _pretrained()
    cfg = FinetuneConfig(strategy=strategy, layers=layers, max_epochs=3, patience=5, batch_size=4, lr=1e-2)
    before = _train(model, cfg)
    assert _changed(model, before) == expected


def test_unknown_layer_pattern_is_a_clear_error() -> None:
    with pytest.raises(TasksimError, match="match no encoder parameter"):
        finetune_options(_pretrained(), FinetuneConfig(strategy="layers", layers=["W_x.*"]), True)


def test_gradual_unfreezing_opens_groups_top_down() -> None:
    model = _pretrained()
    opts = finetune_options(model, FinetuneConfig(strategy="full", gradual_unfreeze=2), True)
    trainable = []
    for epoch in range(8):
        opts.on_epoch_start(epoch)
        trainable.append({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})
    assert trainable[0] == trainable[1] == {"ffn"}
    assert trainable[2] == {"ffn", "W_o"}
    assert trainable[4] == {"ffn", "W_o", "W_h"}
    assert trainable[6] == trainable[7] == {"ffn", "W_o", "W_h", "W_i"}


def test_layerwise_lr_decay() -> None:
    model = _pretrained()
    opts = finetune_options(model, FinetuneConfig(strategy="full", lr=1e-2, llrd=0.5), True)
    lrs = [g["lr"] for g in opts.make_optimizer(model).param_groups]
    assert lrs == pytest.approx([1e-2, 5e-3, 2.5e-3, 1.25e-3])  # head, W_o, W_h, W_i


def test_l2sp_keeps_weights_closer_to_the_pretrained_ones() -> None:
    drift = {}
    for weight in (0.0, 10.0):
        model = _pretrained()
        cfg = FinetuneConfig(strategy="full", max_epochs=5, patience=10, batch_size=4, lr=5e-2,
                             regularizer=RegularizerConfig(kind="l2sp", weight=weight))
        before = _train(model, cfg)
        drift[weight] = sum(float((p.detach() - before[n]).pow(2).sum()) for n, p in model.named_parameters()
                            if n.startswith("W_"))
    assert drift[10.0] < drift[0.0]


def test_bss_penalty_is_wired_to_the_features() -> None:
    model = _pretrained()
    cfg = FinetuneConfig(regularizer=RegularizerConfig(kind="bss", weight=1.0, bss_k=2))
    opts = finetune_options(model, cfg, True)
    z = torch.randn(6, 16, requires_grad=True)
    expected = (torch.linalg.svdvals(z)[-2:] ** 2).sum()
    assert torch.allclose(opts.penalty(z), expected)
    assert finetune_options(_pretrained(), cfg, pretrained=False).penalty is None  # scratch: no regulariser


def test_two_regularisers_sum_their_penalties() -> None:
    """L2-SP and BSS together (the MACE-MP fine-tuning recipe): the penalty is the sum of both terms."""
    model = _pretrained()
    regs = [RegularizerConfig(kind="l2sp", weight=0.5), RegularizerConfig(kind="bss", weight=2.0, bss_k=1)]
    opts = finetune_options(model, FinetuneConfig(regularizers=regs), True)
    with torch.no_grad():
        model.W_h.weight.add_(0.1)  # moved away from the pretrained weights by a known amount
    z = torch.randn(6, 16)
    l2sp = 0.5 * 0.01 * model.W_h.weight.numel()
    assert float(opts.penalty(z)) == pytest.approx(l2sp + 2.0 * float(torch.linalg.svdvals(z)[-1] ** 2), rel=1e-4)


def test_added_layers_grow_the_head_and_train_with_it() -> None:
    """added_layers puts hidden layers (encoder width) before the fresh head; with strategy head they
    and the head train and the encoder stays frozen."""
    model = _pretrained()
    cfg = FinetuneConfig(strategy="head", added_layers=2, max_epochs=3, patience=5, batch_size=4, lr=1e-2)
    opts = finetune_options(model, cfg, True)
    linears = [m for m in model.ffn if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and linears[0].in_features == linears[0].out_features == model.embedding_dim
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    graphs, y = _graphs_and_y()
    fit(model, graphs, y, graphs[:4], y[:4], opts, seed=0, mean=float(y.mean()), std=float(y.std()))
    trained = _changed(model, before)
    assert len(trained) == 8 and all(n.startswith("ffn.") for n in trained)  # 4 linears, weight and bias


@pytest.mark.parametrize("k", [1, 2, 3])
def test_moe_gates_sum_to_one_with_exactly_k_nonzero(k: int) -> None:
    theta = initial_theta(5, "uniform", None, seed=k)
    g = top_k_gates(theta, k)
    assert float(g.sum()) == pytest.approx(1.0)
    assert int((g > 0).sum()) == k
    assert set(torch.topk(theta, k).indices.tolist()) == set(torch.nonzero(g).flatten().tolist())


def test_moe_trains_only_last_expert_layers_theta_and_head() -> None:
    experts = [_pretrained(seed) for seed in range(3)]
    sim_row = np.array([0.1, 0.9, 0.5])
    theta = initial_theta(3, "similarity", sim_row, seed=0)
    assert float(theta.norm()) == pytest.approx(1.0)
    dim = experts[0].embedding_dim
    moe = MixtureOfExperts(theta, 2, mlp_head(dim, 8, 2, 0.0, 1), dim, experts=experts)
    assert torch.nonzero(moe.gates()).flatten().tolist() == [1, 2]  # the two most similar experts
    opts = moe_options(moe, MoEConfig(k=2), max_epochs=3, patience=5, batch_size=4)
    before = {n: p.detach().clone() for n, p in moe.named_parameters()}
    graphs, y = _graphs_and_y()
    fit(moe, graphs, y, graphs[:4], y[:4], opts, seed=0, mean=float(y.mean()), std=float(y.std()))
    changed = _changed(moe, before)
    assert {"theta", "head.0.weight"} <= changed
    assert {"experts.1.W_o.weight", "experts.2.W_o.weight"} <= changed
    assert not any(n.startswith("experts.0.") for n in changed)  # outside the top k: no gradient
    assert not any(".W_i." in n or ".W_h." in n for n in changed)  # frozen encoder layers
    theta = moe.theta.detach()
    assert float(opts.penalty(torch.zeros(1)).detach()) == pytest.approx(0.01 * (float(theta @ theta) - 1) ** 2)


def test_discriminative_rates_warmup_and_standardised_features() -> None:
    """The head trains at head_lr and the encoder at lr, both ramped up over the warm-up epochs; the
    standardising layer in front of the head makes the training features zero-mean, unit-std and trains nothing."""
    from tasksim_ray.training.finetune import graph_features, head_names, standardise_head
    from tasksim_ray.training.loop import Trainer

    model = _pretrained()
    graphs, y = _graphs_and_y()
    feats = graph_features(model, graphs, torch.device("cpu"))
    standardise_head(model, feats)
    with torch.no_grad():
        z = model.head[0](feats)
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-5)
    assert torch.allclose(z.std(0)[feats.std(0) > 0], torch.ones(int((feats.std(0) > 0).sum())), atol=1e-4)
    assert not [n for n in head_names(model) if "mean" in n or "std" in n]  # buffers, not parameters
    cfg = FinetuneConfig(lr=1e-4, head_lr=1e-2, warmup_epochs=3, max_epochs=5, patience=5, batch_size=4)
    opts = finetune_options(model, cfg, pretrained=True)
    trainer = Trainer(model, graphs, y, graphs[:4], y[:4], opts, 0, float(y.mean()), float(y.std()))
    seen = []
    for _ in range(5):
        trainer.run_epoch()
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
    assert seen[0][0] == pytest.approx(1e-2 / 4) and seen[0][1] == pytest.approx(1e-4 / 4)
    assert seen[2][0] == pytest.approx(1e-2 * 3 / 4) and seen[3][0] == seen[4][0] == pytest.approx(1e-2)


def test_ridge_probe_chooses_alpha_on_validation() -> None:
    """Ridge on train-standardised features: a linear target is recovered with a small alpha; for
    pure noise validation prefers the largest alpha (the training mean)."""
    from tasksim_ray.training.probe import ALPHAS, ridge_probe

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)) * np.array([1e-3, 1, 10, 1, 1, 1, 1, 1])  # scales a fresh head would mind
    y = x @ np.array([500.0, 1, 0.1, 0, 0, 0, 0, 0]) + 3
    tr, va, te = slice(0, 100), slice(100, 200), slice(200, 300)
    fit = ridge_probe(x[tr], y[tr], x[va], y[va], x[te])
    assert fit.alpha <= 1e-1 and np.mean(np.abs(fit.test_pred - y[te])) < 0.05 * np.std(y)
    noise = rng.normal(size=300)
    flat = ridge_probe(x[tr], noise[tr], x[va], noise[va], x[te])
    assert flat.alpha >= 1e3 and set(flat.val_mae_per_alpha) == set(ALPHAS)


def test_a_binary_target_trains_with_the_logistic_loss_and_is_scored_by_roc_auc() -> None:
    """A constructed 0/1 target (does the molecule have more than 4 heavy atoms?) trains on logits with
    the logistic loss (validation log-loss drives early stopping) and is scored by ROC-AUC and accuracy."""
    from tasksim_ray.training.loop import FitOptions, predict
    from tasksim_ray.training.objectives import binary_scores, roc_auc

    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert np.isnan(roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))
    graphs, _ = _graphs_and_y()
    y = np.array([float(g.num_nodes > 4) for g in graphs])
    assert 0 < y.sum() < len(y)
    model = _pretrained()
    opts = FitOptions(40, None, 4, 1e-2, objective="binary")
    result = fit(model, graphs, y, graphs, y, opts, seed=0, mean=0.0, std=1.0)
    logits = predict(model, graphs, 64, torch.device("cpu"))
    scores = binary_scores(logits, y)
    assert scores["test_auc"] > 0.9 and scores["test_acc"] > 0.8 and scores["test_mae"] == 1 - scores["test_auc"]
    loss = float(np.mean(np.logaddexp(0, logits) - y * logits))
    assert result.best_val_mae == pytest.approx(loss, rel=1e-4)  # the validation log-loss of the kept weights
    with pytest.raises(ValueError, match="objective binary: training labels must be 0 or 1"):
        fit(_pretrained(), graphs, y + 0.5, graphs, y, opts, seed=0, mean=0.0, std=1.0)
