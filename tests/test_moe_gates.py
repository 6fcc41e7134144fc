"""The mixture of experts as the MoE paper sets it (Chang et al. 2022): theta = ones gives exactly
uniform gates and the model a cell builds follows the config's k and init; the k trainable last
convolutions, run side by side, equal a per-expert loop (outputs, gradients, batch-norm buffers,
in training and eval); the three aggregations of the paper's Table 1 train; the STL recipe of its
section 3.2 is expressible. Real crystals (the test subset of two MoE tasks) and real published
extractors; no Ray needed."""

from __future__ import annotations

import copy
import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pymatgen.core import Structure
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.config import FinetuneConfig, ModelConfig, MoEConfig, ScratchConfig
from tasksim_ray.featurize.crystal import structure_to_graph
from tasksim_ray.featurize.graphstore import pack_graphs
from tasksim_ray.models import cgcnn as cgcnn_module
from tasksim_ray.models.cgcnn import CGCNN, distinct_rows, stacked_convs
from tasksim_ray.models.moe import MixtureOfExperts, initial_theta, top_k_gates
from tasksim_ray.models.published import extractor_features, load_published
from tasksim_ray.training.finetune import scratch_options
from tasksim_ray.training.loop import Trainer, fit
from tasksim_ray.transfer import cells

REPO = Path(__file__).resolve().parents[1]
TASK = REPO / "tests" / "data" / "crystals" / "moe_study" / "moe_tasks" / "jarvis_dft_2d_dielectric_tbmbj_2022-04-11.json.gz"
EXTRACTORS = REPO.parent / "shared" / "data" / "models" / "cgcnn_moe_extractors"
NAMES = ["singletask_eform_32hfealen_best_model.pth.tar", "singletask_32hfl_jarvisEg_best_model.pth.tar",
         "singletask_gvrh_32hfealen_best_model.pth.tar", "singletask_bandgap_32hfealen_best_model.pth.tar"]
needs_extractors = pytest.mark.skipif(not all((EXTRACTORS / n).is_file() for n in NAMES),
                                      reason="published extractors not at ../shared/data")


def crystals() -> tuple[list, np.ndarray]:
    """The 28 crystals of the test subset (train 16, val 6, test 6) and their labels."""
    rows = json.loads(gzip.decompress(TASK.read_bytes()))["data"]
    return ([structure_to_graph(Structure.from_dict(r["structure"])) for r in rows],
            np.array([r["dielectric tbmbj"] for r in rows], float))


@pytest.fixture(scope="module")
def store() -> dict[str, torch.Tensor]:
    """The graph store a cell gets: the graphs and each extractor's atom features entering its
    last convolution (``h_in/<name>``), computed by the frozen layers below it."""
    graphs, _ = crystals()
    packed = pack_graphs(graphs)
    for name in NAMES:
        packed[f"h_in/{name}"] = extractor_features(load_published(EXTRACTORS / name)[0], graphs)[0]
    return packed


def settings(**moe: object) -> cells.CellSettings:
    cfg = {"k": len(NAMES), "penalty_on": "gates", "head_layers": 3, "schedule": "cosine"} | moe
    return cells.CellSettings(ModelConfig(backbone="cgcnn"), FinetuneConfig(max_epochs=2, patience=2, batch_size=8),
                              MoEConfig(**cfg), seed=0)


def recipe() -> cells.Recipe:
    return cells.Recipe("moe", "moe", tuple(str(EXTRACTORS / n) for n in NAMES), published=True)


@pytest.mark.parametrize("m", [1, 3, 18])
def test_theta_ones_gives_exactly_uniform_gates_at_k_equal_m(m: int) -> None:
    theta = initial_theta(m, "ones", None, seed=7)
    assert torch.equal(theta, torch.ones(m))  # no noise, no normalisation
    assert torch.equal(top_k_gates(theta, m), torch.full((m,), 1.0 / m))
    # with k < m the tie is broken by expert order: the first k, each 1/k
    k = max(1, m // 2)
    assert torch.equal(top_k_gates(theta, k), torch.cat([torch.full((k,), 1.0 / k), torch.zeros(m - k)]))


@needs_extractors
@pytest.mark.parametrize(("k", "init"), [(4, "ones"), (2, "ones"), (3, "uniform")])
def test_the_model_a_cell_builds_follows_the_configs_k_and_init(store: dict, k: int, init: str) -> None:
    model, opts = cells._build(recipe(), settings(k=k, init=init), 0, torch.device("cpu"), store)
    assert isinstance(model, MixtureOfExperts) and model.k == k and len(model.tails) == len(NAMES)
    gates = model.gates().detach()
    assert int((gates > 0).sum()) == k and float(gates.sum()) == pytest.approx(1.0)
    if init == "ones":
        assert torch.equal(model.theta.detach(), torch.ones(len(NAMES)))
        assert torch.equal(gates[:k], torch.full((k,), 1.0 / k))  # uniform over the first k
    else:
        assert float(model.theta.detach().norm()) == pytest.approx(1.0) and not torch.all(model.theta == model.theta[0])
    assert opts.penalty is not None and opts.schedule == "cosine"


def per_expert_features(tails: list, inputs: list[torch.Tensor], batch: Batch) -> torch.Tensor:
    """The reference: each expert's last convolution on its own, in a Python loop, then the mean
    over a crystal's atoms and softplus (the extractor feature), (crystals, k, d)."""
    out = []
    for conv, table in zip(tails, inputs):
        h = conv(table.index_select(0, batch.atom_id), batch.edge_index, batch.edge_attr)
        out.append(F.softplus(scatter(h, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")))
    return torch.stack(out, 1)


@needs_extractors
@pytest.mark.parametrize("shuffled", [False, True])
def test_side_by_side_tails_equal_a_per_expert_loop(store: dict, shuffled: bool) -> None:
    """Outputs, every parameter's gradient and the batch-norm buffers, over three training steps
    and an eval pass, on real crystal graphs; ``shuffled`` puts the edges out of centre order (the
    general gather/scatter path instead of CGCNN's padded neighbour lists)."""
    graphs, _ = crystals()
    batch = Batch.from_data_list(cells._with_atom_ids(store, graphs))
    if shuffled:
        perm = torch.randperm(batch.num_edges, generator=torch.Generator().manual_seed(0))
        batch.edge_index, batch.edge_attr = batch.edge_index[:, perm], batch.edge_attr[perm]
    inputs = [store[f"h_in/{n}"] for n in NAMES]
    torch.manual_seed(0)
    model = MixtureOfExperts(initial_theta(len(NAMES), "uniform", None, 0), 3,
                             torch.nn.Linear(64, 1), 64, tails=[load_published(EXTRACTORS / n)[0].convs[-1] for n in NAMES],
                             tail_inputs=inputs, penalty_on="gates")
    ref = copy.deepcopy(model)
    target = torch.randn(batch.num_graphs, 1)
    for training in (True, True, True, False):
        model.train(training), ref.train(training)
        g = ref.gates()
        chosen = torch.nonzero(g > 0).flatten().tolist()
        expected = ref.head((per_expert_features([ref.tails[i] for i in chosen], [inputs[i] for i in chosen], batch)
                             * g[chosen, None]).sum(1))
        got = model(batch)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if training:
            (F.mse_loss(got, target) + model.gate_penalty()).backward()
            (F.mse_loss(expected, target) + ref.gate_penalty()).backward()
            for (name, p), q in zip(model.named_parameters(), ref.parameters()):
                if q.grad is None:
                    assert p.grad is None, name  # experts outside the top k get no gradient
                    continue
                if name.endswith("fc_full.bias"):  # just before a batch norm: zero up to rounding in both
                    assert max(float(p.grad.abs().max()), float(q.grad.abs().max())) <= 1e-4, name
                else:
                    scale = float(q.grad.abs().max()) or 1.0
                    assert float((p.grad - q.grad).abs().max()) <= 1e-4 * max(scale, 1e-3), name
                with torch.no_grad():  # the same optimiser step on both
                    p -= 0.01 * p.grad
                    q -= 0.01 * q.grad
                p.grad, q.grad = None, None
        for (name, b), c in zip(model.named_buffers(), ref.buffers()):
            if "running" in name or "num_batches" in name:
                torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=name)


def test_stacked_convolutions_keep_each_layers_train_and_eval_semantics() -> None:
    """A convolution stack of fresh CGCNN layers in eval mode uses the running statistics (not the
    batch's), and a training pass counts the batch in every layer."""
    torch.manual_seed(0)
    graphs, _ = crystals()
    batch = Batch.from_data_list(graphs[:6])
    convs = [CGCNN(atom_fea_len=8, n_conv=1).convs[0] for _ in range(3)]
    h = torch.randn(batch.num_nodes, 3, 8)
    for c in convs:
        c.bn1.running_mean.normal_(), c.bn2.running_var.uniform_(0.5, 2.0)
    ref = copy.deepcopy(convs)
    for training in (False, True):
        for c in convs + ref:
            c.train(training)
        got = stacked_convs(convs, h, batch.edge_index, batch.edge_attr)
        expected = torch.stack([c(h[:, i], batch.edge_index, batch.edge_attr) for i, c in enumerate(ref)], 1)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert [int(c.bn1.num_batches_tracked) for c in convs] == [1, 1, 1]
    for c, r in zip(convs, ref):
        torch.testing.assert_close(c.bn1.running_var, r.bn1.running_var)
        torch.testing.assert_close(c.bn2.running_mean, r.bn2.running_mean)


def test_bond_terms_once_per_distinct_bond_equal_the_per_edge_bond_terms(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacked convolutions compute W_u u + b once per distinct bond row and gather it per
    edge; against the same kernel with every edge its own row (the bond matmul over every edge, as
    before), outputs and every parameter's gradient agree to 1e-5, over training steps and an eval pass."""
    torch.manual_seed(0)
    graphs, _ = crystals()
    batch = Batch.from_data_list(graphs)
    rows, index = distinct_rows(batch.edge_attr)
    assert torch.equal(rows[index], batch.edge_attr)
    assert len(rows) == len(torch.unique(batch.edge_attr, dim=0)) < batch.num_edges / 2  # crystals repeat distances
    tiny = torch.tensor([[1.0, 1e-30], [1.0, 2e-30], [1.0, 1e-30]])  # equal projections, different rows
    tiny_rows, tiny_index = distinct_rows(tiny)
    assert torch.equal(tiny_rows[tiny_index], tiny) and len(tiny_rows) == 2
    convs = [CGCNN(atom_fea_len=16, n_conv=1).convs[0] for _ in range(3)]
    ref = copy.deepcopy(convs)
    h = torch.randn(batch.num_nodes, 3, 16)
    every_edge = cgcnn_module.distinct_rows

    def run(layers: list, per_edge: bool) -> torch.Tensor:
        monkeypatch.setattr(cgcnn_module, "distinct_rows", (lambda x: (x, torch.arange(len(x)))) if per_edge
                            else every_edge)
        return stacked_convs(layers, h, batch.edge_index, batch.edge_attr)

    for training in (True, True, False):
        for c in convs + ref:
            c.train(training)
        got, expected = run(convs, False), run(ref, True)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        if training:
            weights = torch.randn_like(got)
            (got * weights).sum().backward()
            (expected * weights).sum().backward()
            params = [x for c in convs for x in c.named_parameters()]
            for (name, p), q in zip(params, [x for c in ref for x in c.parameters()]):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)
                with torch.no_grad():
                    p -= 0.01 * p.grad
                    q -= 0.01 * q.grad
                p.grad = q.grad = None


@needs_extractors
@pytest.mark.parametrize("aggregation", ["concat", "ensemble"])
def test_concat_and_ensemble_train_with_finite_losses_and_the_right_head_widths(store: dict, aggregation: str) -> None:
    graphs, y = crystals()
    model, opts = cells._build(recipe(), settings(aggregation=aggregation, k=2), 0, torch.device("cpu"), store)
    heads = model._modules["head"]
    if aggregation == "concat":  # one head over the m gated features side by side
        assert heads[0].in_features == len(NAMES) * 64
    else:  # one head per expert, each over that expert's feature
        assert len(heads) == len(NAMES) and all(h[0].in_features == 64 for h in heads)
    data = cells._with_atom_ids(store, graphs)
    before = copy.deepcopy(model.state_dict())
    result = fit(model, data[:16], y[:16], data[16:22], y[16:22], opts, 0, float(y[:22].mean()), float(y[:22].std()))
    assert result.epochs_run == 2 and all(math.isfinite(h["train_loss"]) for h in result.history)
    changed = {n for n, v in model.state_dict().items() if not torch.equal(v, before[n])}
    chosen = torch.nonzero(model.gates() > 0).flatten().tolist()
    assert "theta" in changed and float(model.gates().detach().sum()) == pytest.approx(1.0)
    assert {f"tails.{i}.fc_full.weight" for i in chosen} <= changed
    model.eval()  # the prediction is the paper's formula, from the chosen experts' features
    batch = Batch.from_data_list(data[22:])
    with torch.no_grad():
        g, feats = model.gates(), model.features(batch, chosen)
        if aggregation == "ensemble":  # sum_i G_i H_i(E_i(x))
            expected = sum(g[i] * heads[i](feats[:, j]) for j, i in enumerate(chosen))
        else:  # H(G_1 E_1(x) + ... + G_m E_m(x) side by side), zeros for experts outside the top k
            side_by_side = torch.zeros(len(feats), len(NAMES), 64)
            side_by_side[:, chosen] = feats * g[chosen, None]
            expected = heads(side_by_side.flatten(1))
        torch.testing.assert_close(model(batch), expected)


def test_the_papers_stl_recipe_is_adam_at_1e_2_with_cosine_and_mse() -> None:
    """Section 3.2: Adam, learning rate 1e-2 for STL, cosine annealing, mean squared error."""
    model = CGCNN(atom_fea_len=8, n_conv=2, h_fea_len=8)
    opts = scratch_options(model, FinetuneConfig(lr=1e-3, max_epochs=4), ScratchConfig(optimizer="adam", lr=0.01, min_lr=0.0))
    optimizer = opts.make_optimizer(model)
    assert isinstance(optimizer, torch.optim.Adam)
    assert {g["lr"] for g in optimizer.param_groups} == {0.01}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    assert opts.schedule == "cosine" and opts.eta_min == 0.0 and opts.max_epochs == 4
    graphs, y = crystals()
    trainer = Trainer(model, graphs[:16], y[:16], graphs[16:22], y[16:22], opts, 0, float(y.mean()), float(y.std()))
    assert trainer.loss is F.mse_loss  # every label present: plain MSE
    lrs = []
    for _ in range(4):
        trainer.run_epoch()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
