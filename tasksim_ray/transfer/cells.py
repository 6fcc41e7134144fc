"""Cells: train one target model on one (train, val, test) split of its rows, test it.

A cell is (target, recipe, size, fold): a learning-curve prefix of a fold, or (``size`` None) the
whole training split of one split seed. The recipe says how the model starts: ``scratch`` (the
baseline, with its own optimiser), ``finetune`` from one pretrained checkpoint (single- or
multi-task model folder, or a published extractor with a new head), or ``moe`` over experts
(model folders, or published extractors whose frozen layers were computed once into the graph
store as ``feat/<name>`` and ``h_in/<name>``). Cells run as Ray jobs (``infra.jobs``) in parallel,
and each finished cell is published as its own artifact folder keyed by everything it depends on,
so a run killed halfway resumes with only the missing cells.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
import torch
from torch_geometric.data import Data

from tasksim_ray.config import FinetuneConfig, ModelConfig, MoEConfig, ScratchConfig
from tasksim_ray.errors import TasksimError, TrainingDiverged
from tasksim_ray.featurize.graphstore import unpack_graphs
from tasksim_ray.infra.cache import Artifacts, artifact_key, stable_hash
from tasksim_ray.infra.jobs import Job, JsonResults, run_jobs
from tasksim_ray.models import build_model, load_checkpoint
from tasksim_ray.models.heads import mlp_head
from tasksim_ray.models.moe import MixtureOfExperts, initial_theta, softplus_head
from tasksim_ray.models.published import load_published
from tasksim_ray.training.device import choose_device
from tasksim_ray.training.finetune import (finetune_options, graph_features, layer_drift, moe_options, scratch_options,
                                           standardise_head, use_pretrained_readout)
from tasksim_ray.training.loop import FitOptions, fit, predict
from tasksim_ray.training.pretrain import model_hparams
from tasksim_ray.training.objectives import binary_scores
from tasksim_ray.training.probe import ALPHAS, ridge_probe


@dataclass(frozen=True)
class Recipe:
    """How a target model starts. ``checkpoints`` are model folders (one to fine-tune from, or
    the experts, or published extractor files when ``published``, identified by ``fingerprints``);
    ``theta`` an optional similarity row that initialises the MoE gate."""

    kind: Literal["scratch", "finetune", "moe", "probe", "mean"]
    label: str
    checkpoints: tuple[str, ...] = ()
    theta: tuple[float, ...] | None = None
    finetune: FinetuneConfig | None = None  # a fine-tuning variant (or scratch's lr); None: the config's ``finetune``
    moe: MoEConfig | None = None  # a mixture's own settings; None: the config's ``moe``
    published: bool = False
    fingerprints: tuple[Any, ...] = ()

    @property
    def key(self) -> str:
        # folder names carry the checkpoints' content keys; absolute paths would tie caches to a disk
        return stable_hash(self.kind, [Path(c).name for c in self.checkpoints], self.theta,
                           *([self.fingerprints] if self.published else []))


@dataclass(frozen=True)
class CellData:
    """One target's training rows at one size on one fold (``size`` None: the whole training split
    of split seed ``fold``), with its validation and test rows. ``seed`` seeds training (None:
    derived from the fold); ``standardize`` says which labels give the mean and std."""

    target: str
    fold: int
    size: int | None
    train_pos: np.ndarray
    y_train: np.ndarray
    val_pos: np.ndarray
    y_val: np.ndarray
    test_pos: np.ndarray
    y_test: np.ndarray
    content_key: str
    seed: int | None = None
    standardize: Literal["train", "train_val"] = "train"
    objective: Literal["regression", "binary"] = "regression"  # binary: 0/1 labels, logistic loss, ROC-AUC

    def mean_std(self) -> tuple[float, float]:
        """Train mean and std, or (published) train+val mean and sample std; 0 and 1 for a binary target
        (the model's output is a logit)."""
        if self.objective == "binary":
            return 0.0, 1.0
        if self.standardize == "train_val":
            seen = np.concatenate([self.y_train, self.y_val])
            return float(np.mean(seen)), float(np.std(seen, ddof=1)) or 1.0
        return float(np.mean(self.y_train)), float(np.std(self.y_train)) or 1.0


@dataclass(frozen=True)
class CellSettings:
    model: ModelConfig
    finetune: FinetuneConfig
    moe: MoEConfig
    seed: int
    scratch: ScratchConfig = ScratchConfig()

    def moe_for(self, recipe: Recipe) -> MoEConfig:
        return recipe.moe or self.moe

    def key_for(self, recipe: Recipe) -> Any:
        loop = self.finetune.model_dump(include={"max_epochs", "patience", "batch_size"})
        if recipe.kind == "moe" or recipe.published:
            ft = (recipe.finetune or self.finetune).strategy if recipe.kind == "finetune" else None
            return [self.model.model_dump(), self.moe_for(recipe).model_dump(), loop, ft]
        if recipe.kind in ("probe", "mean"):
            return [recipe.kind, list(ALPHAS)]
        if recipe.kind == "scratch":
            return [self.model.model_dump(), (recipe.finetune or self.finetune).model_dump(include={
                "lr", "max_epochs", "patience", "batch_size", "head_lr", "warmup_epochs", "feature_norm"}),
                    self.scratch.model_dump()]
        return (recipe.finetune or self.finetune).model_dump()


def cell_key(cell: CellData, recipe: Recipe, settings: CellSettings) -> str:
    binary = ["binary"] if cell.objective == "binary" else []  # regression cells keep their keys
    return artifact_key("cell", cell.target, cell.content_key, cell.size, cell.fold, recipe.key,
                       settings.key_for(recipe), settings.seed, *binary)


def finetune_setup(directory: Path, finetune: FinetuneConfig, seed: int,
                   device: torch.device) -> tuple[torch.nn.Module, FitOptions]:
    """A pretrained model with a fresh (seeded) head, and the strategy's training options."""
    torch.manual_seed(seed)
    model, _ = load_checkpoint(directory, device)
    model.reset_head(1)
    if finetune.keep_readout:
        use_pretrained_readout(model)
    return model, finetune_options(model, finetune, pretrained=True)


def test_mae(model: torch.nn.Module, graphs: list, cell: CellData, mean: float, std: float,
             device: torch.device) -> float:
    """MAE on the cell's test molecules, in the target's units."""
    pred = predict(model, [graphs[i] for i in cell.test_pos], 256, device) * std + mean
    return float(np.mean(np.abs(pred - cell.y_test)))


def test_scores(pred: np.ndarray, cell: CellData, threshold: float = 0.0) -> dict[str, float]:
    """The cell's test scores from its predictions: MAE, or for a binary target ROC-AUC, accuracy
    and 1 - ROC-AUC as ``test_mae`` (``threshold``: the score above which a prediction is 1)."""
    if cell.objective == "binary":
        return binary_scores(pred, cell.y_test, threshold)
    return {"test_mae": float(np.mean(np.abs(pred - cell.y_test)))}


def _head(moe: MoEConfig, model_cfg: ModelConfig, dim: int, n_experts: int) -> torch.nn.Module | list[torch.nn.Module]:
    """The mixture's head for its aggregation: one per expert (``ensemble``), or one over the
    features side by side (``concat``: n_experts * dim) or added (dim)."""
    def one(width: int) -> torch.nn.Module:
        if moe.head_layers is not None:
            return softplus_head(width, moe.head_hidden, moe.head_layers)
        return mlp_head(width, model_cfg.ffn_hidden_dim, model_cfg.ffn_layers, model_cfg.dropout, 1)

    if moe.aggregation == "ensemble":
        return [one(dim) for _ in range(n_experts)]
    return one(dim * n_experts if moe.aggregation == "concat" else dim)


def _train_last(recipe: Recipe, settings: CellSettings) -> bool:
    """Published recipes: does the experts' last layer train? (fine-tuning: strategy head/last)"""
    if recipe.kind == "moe":
        return settings.moe_for(recipe).train_last
    strategy = (recipe.finetune or settings.finetune).strategy
    if strategy not in ("head", "last"):
        raise TasksimError(f"finetune.strategy '{strategy}' from published checkpoints: use 'head' or 'last'")
    return strategy == "last"


def _build(recipe: Recipe, settings: CellSettings, seed: int, device: torch.device,
           store: dict[str, torch.Tensor]):
    if recipe.kind == "finetune" and not recipe.published:
        return finetune_setup(Path(recipe.checkpoints[0]), recipe.finetune or settings.finetune, seed, device)
    torch.manual_seed(seed)
    if recipe.kind == "scratch" and recipe.checkpoints:  # a foundation model's architecture, randomly initialised
        spec = json.loads((Path(recipe.checkpoints[0]) / "config.json").read_text())
        if "pretrained" not in spec["hparams"]:
            raise TasksimError(f"{spec['backbone']}: no 'pretrained' switch; give its scratch arm as model.backbone")
        model = build_model(spec["backbone"], spec["hparams"] | {"pretrained": False, "freeze": False})
        return model, scratch_options(model, recipe.finetune or settings.finetune, settings.scratch)
    if recipe.kind == "scratch":
        model = build_model(settings.model.backbone, model_hparams(settings.model))
        return model, scratch_options(model, recipe.finetune or settings.finetune, settings.scratch)
    moe, ft = settings.moe_for(recipe), settings.finetune
    theta = initial_theta(len(recipe.checkpoints), moe.init, np.array(recipe.theta) if recipe.theta is not None else None,
                          seed)
    if recipe.published:  # the frozen layers are in the store; the last ones load here if they train
        tails = [load_published(c)[0].convs[-1] for c in recipe.checkpoints] if _train_last(recipe, settings) else None
        dim = 64 if tails is None else tails[0].bn2.num_features
        inputs = None if tails is None else [store[f"h_in/{Path(c).name}"] for c in recipe.checkpoints]
        model = MixtureOfExperts(theta, moe.k, _head(moe, settings.model, dim, len(theta)), dim, tails=tails,
                                 tail_inputs=inputs, penalty_on=moe.penalty_on, aggregation=moe.aggregation)
    else:
        experts = [load_checkpoint(Path(c), device)[0] for c in recipe.checkpoints]
        dim = experts[0].embedding_dim
        model = MixtureOfExperts(theta, moe.k, _head(moe, settings.model, dim, len(theta)), dim, experts=experts,
                                 penalty_on=moe.penalty_on, aggregation=moe.aggregation)
    return model, moe_options(model, moe, ft.max_epochs, ft.patience, ft.batch_size)


def _with_atom_ids(store: dict[str, torch.Tensor], graphs: list[Data]) -> list[Data]:
    """Graphs carrying their atoms' rows in the store (``atom_id``), where the mixture finds the
    experts' atom features entering their last layer (``h_in/<name>``)."""
    ap = store["atom_ptr"].tolist()
    return [Data(edge_index=g.edge_index, edge_attr=g.edge_attr, atom_id=torch.arange(ap[i], ap[i + 1]),
                 num_nodes=g.num_nodes) for i, g in enumerate(graphs)]


def run_cell(store: dict[str, torch.Tensor], cell: CellData, recipe: Recipe, settings: CellSettings,
             num_threads: int = 1, *_after: Any) -> dict[str, Any]:
    """Train and test one cell (a Ray task body): test MAE in the target's units. ``_after`` are the
    results of the pretraining runs this cell starts from: Ray runs the cell once they are done."""
    torch.set_num_threads(num_threads)
    device = choose_device()
    seed = cell.seed if cell.seed is not None else settings.seed + 1000 * cell.fold
    if recipe.kind in ("probe", "mean"):
        return _baseline_cell(store, cell, recipe, device)
    model, opts = _build(recipe, settings, seed, device, store)
    opts = replace(opts, stage=recipe.kind, task=cell.target, objective=cell.objective)
    mean, std = cell.mean_std()
    names = [Path(c).name for c in recipe.checkpoints]
    if recipe.published and model.tails is None:  # every expert layer frozen: train on the stored features
        device = torch.device("cpu")
        feats = torch.stack([store[f"feat/{n}"] for n in names], dim=1)
        result = fit(model, feats[cell.train_pos], cell.y_train, feats[cell.val_pos], cell.y_val, opts, seed,
                     mean, std, device)
        scores = test_scores(predict(model, feats[cell.test_pos], 256, device) * std + mean, cell)
    else:
        graphs = unpack_graphs(store)
        if recipe.published:
            graphs = _with_atom_ids(store, graphs)
        if (recipe.finetune or settings.finetune).feature_norm and recipe.kind in ("scratch", "finetune"):
            standardise_head(model.to(device), graph_features(model, [graphs[i] for i in cell.train_pos], device))
        try:
            result = fit(model, [graphs[i] for i in cell.train_pos], cell.y_train, [graphs[i] for i in cell.val_pos],
                         cell.y_val, opts, seed, mean, std, device)
        except TrainingDiverged as exc:
            if recipe.label == recipe.label.split(" [")[0]:  # not a grid point: the run stops, loudly
                raise
            # a grid point whose learning rate or penalty is too strong: recorded, never chosen (infinite
            # validation MAE); the grid table shows it
            return {"target": cell.target, "recipe": recipe.label, "kind": recipe.kind, "size": cell.size,
                    "fold": cell.fold, "test_mae": float("nan"), "val_mae": float("inf"), "best_epoch": -1,
                    "epochs_run": 0, "seconds": 0.0, "diverged": str(exc),
                    "n": [len(cell.train_pos), len(cell.val_pos), len(cell.test_pos)]}
        scores = test_scores(predict(model, [graphs[i] for i in cell.test_pos], 256, device) * std + mean, cell)
    out = {"target": cell.target, "recipe": recipe.label, "kind": recipe.kind, "size": cell.size,
           "fold": cell.fold, **scores, "val_mae": result.best_val_mae, "best_epoch": result.best_epoch,
           "epochs_run": result.epochs_run, "seconds": round(result.seconds, 3),
           "n": [len(cell.train_pos), len(cell.val_pos), len(cell.test_pos)]}
    if isinstance(model, MixtureOfExperts):
        out["gates"] = model.gates().detach().cpu().tolist()
    if recipe.kind == "finetune" and not recipe.published:  # how far each layer group moved from the source
        out["drift"] = layer_drift(model, load_checkpoint(Path(recipe.checkpoints[0]), device)[0])
    return out


def _baseline_cell(store: dict[str, torch.Tensor], cell: CellData, recipe: Recipe,
                   device: torch.device) -> dict[str, Any]:
    """No training loop: predicting the training mean (``mean``), or the linear probe of a frozen
    encoder (``probe``: ridge on its standardised graph features, alpha chosen on validation)."""
    start = time.perf_counter()
    out: dict[str, Any] = {"best_epoch": -1, "epochs_run": 0}
    threshold = 0.5 if cell.objective == "binary" else 0.0  # these predict the label itself, not a logit
    if recipe.kind == "mean":  # binary: the positive rate (ROC-AUC 0.5, accuracy of the majority class)
        test_pred = np.full(len(cell.y_test), np.mean(cell.y_train))
        val_mae = float(np.mean(np.abs(np.mean(cell.y_train) - cell.y_val)))
    else:
        model, _ = load_checkpoint(Path(recipe.checkpoints[0]), device)
        graphs = unpack_graphs(store)
        feats = [graph_features(model, [graphs[i] for i in pos], device).double().numpy()
                 for pos in (cell.train_pos, cell.val_pos, cell.test_pos)]
        probe = ridge_probe(feats[0], cell.y_train, feats[1], cell.y_val, feats[2])
        test_pred, val_mae = probe.test_pred, probe.val_mae
        out |= {"alpha": probe.alpha, "alpha_edge": probe.edge}
    return out | {"target": cell.target, "recipe": recipe.label, "kind": recipe.kind, "size": cell.size,
                  "fold": cell.fold, **test_scores(test_pred, cell, threshold), "val_mae": val_mae,
                  "seconds": round(time.perf_counter() - start, 3),
                  "n": [len(cell.train_pos), len(cell.val_pos), len(cell.test_pos)]}


def run_cells(store_ref: ray.ObjectRef, jobs: list[tuple[CellData, Recipe]], settings: CellSettings,
              cells_dir: Path, num_cpus: float, num_gpus: float, after: dict[str, ray.ObjectRef] | None = None,
              on_done: Callable[[str, bool], None] | None = None) -> list[dict[str, Any]]:
    """Every cell's result in the order asked; finished cells come from ``cells_dir/<key>/``, and
    the same cell asked twice (scratch shared by two studies) runs once. ``after`` maps checkpoint
    folders still being pretrained to their refs: a cell starts once its checkpoints exist."""
    threads = max(1, int(num_cpus))
    cells = [Job(cell_key(cell, recipe, settings), f"{cell.target} <- {recipe.label} n={cell.size} fold {cell.fold}",
                 run_cell, (store_ref, cell, recipe, settings, threads), num_cpus, num_gpus,
                 after=tuple(after[c] for c in recipe.checkpoints if after and c in after),
                 title=f"cell:{cell.target}<-{recipe.label} n={cell.size} fold {cell.fold}")
             for cell, recipe in jobs]
    results = run_jobs(cells, JsonResults(Artifacts(cells_dir, "cell")), on_done)
    # the same cell can serve several labels (a variant equal to the default recipe): label by the job
    return [r | {"recipe": recipe.label} for r, (_, recipe) in zip(results, jobs)]
