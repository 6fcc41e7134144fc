"""Registries are the single source of names: a backbone, a metric and a study defined in this file
and registered from it (no library edit) validate in a config, run the tiny pipeline through
similarity, a fine-tuning cell and a study of their own, on a real local Ray. The backbone is built
inside Ray workers (pretraining
tasks, embedding actors, fine-tuning cells), which know it only through the driver's registration."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from tasksim_ray.config import PipelineConfig, load_config
from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.molecule import ATOM_FDIM
from tasksim_ray.infra.progress import Console
from tasksim_ray.infra.runtime import ensure_ray
from tasksim_ray.registry import BACKBONES, METRICS, STUDIES, MetricSpec, Registry, StudySpec
from tasksim_ray.similarity import SimilarityInputs
from tasksim_ray.stages.pipeline import PipelineResult, run_pipeline
from tasksim_ray.transfer.runner import finetune_once
from tasksim_ray.transfer.study import SCRATCH, Context, Done, Job, Section, Study

from .conftest import TINY_CONFIG

pytestmark = pytest.mark.usefixtures("ray_local")


class ToyGNN(nn.Module):
    """One round of sum-aggregated messages over the bonds, mean-pooled: the backbone interface, tiny."""

    LAYERS = ("graph",)
    ENCODER_LAYERS = ("lin_in", "lin_msg")

    def __init__(self, hidden: int = 16, n_tasks: int = 1) -> None:
        super().__init__()
        self.lin_in = nn.Linear(ATOM_FDIM, hidden)
        self.lin_msg = nn.Linear(hidden, hidden)
        self.ffn = nn.Linear(hidden, n_tasks)

    @property
    def embedding_dim(self) -> int:
        return self.lin_msg.out_features

    @property
    def head(self) -> nn.Module:
        return self.ffn

    def reset_head(self, n_outputs: int = 1) -> None:
        self.ffn = nn.Linear(self.embedding_dim, n_outputs).to(self.lin_msg.weight.device)

    def embed(self, batch: Batch, layer: str = "graph") -> Tensor:
        src, dst = batch.edge_index
        h = torch.relu(self.lin_in(batch.x))
        h = torch.relu(self.lin_msg(h + scatter(h[src], dst, dim=0, dim_size=h.shape[0], reduce="sum")))
        return scatter(h, batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")

    def forward(self, batch: Batch) -> Tensor:
        return self.ffn(self.embed(batch))


class NormOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    power: float = 1.0


def norm_correlation(inputs: SimilarityInputs, power: float = 1.0) -> np.ndarray:
    """Pearson correlation of the tasks' per-probe embedding norms (to a power): a toy similarity
    with an option of its own (``similarity.options.toy_norms.power``)."""
    return np.corrcoef([np.linalg.norm(e, axis=1) ** power for e in inputs.embeddings.values()])


SETS = {"model.backbone": "toy", "model.params": {"hidden": 16}, "data.targets": ["mu", "alpha", "homo"],
        "similarity.metrics": ["rsa", "toy_norms", "csi_graph"], "similarity.bootstrap.n_boot": 0,
        "selection.metric": "toy_norms", "train.max_epochs": 2, "transfer.tasks": ["mu", "alpha"],
        "similarity.options": {"toy_norms": {"power": 2}}}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """Registered here, at test time (not on import), so a worker cannot get them by importing this file."""
    with pytest.raises(TasksimError, match="unknown backbone 'toy'; registered: alignn, cgcnn"):
        load_config(TINY_CONFIG, SETS)
    BACKBONES.register("toy", ToyGNN)
    METRICS.register("toy_norms", MetricSpec(norm_correlation, "similarity", "embeddings", "embedding-norm r",
                                             options=NormOptions))
    with pytest.raises(TasksimError, match=r"similarity.options.toy_norms: unknown key 'pow'"):
        load_config(TINY_CONFIG, {**SETS, "similarity.options": {"toy_norms": {"pow": 2}}})
    return load_config(TINY_CONFIG, {"workdir": str(tmp_path_factory.mktemp("registry")), **SETS})


@pytest.fixture(scope="module")
def result(cfg: PipelineConfig) -> PipelineResult:
    return run_pipeline(cfg, Console(quiet=True))


def test_registered_names_validate(cfg: PipelineConfig) -> None:
    assert (cfg.model.backbone, cfg.selection.metric) == ("toy", "toy_norms")
    assert cfg.similarity.options_for("toy_norms") == {"power": 2.0}
    assert cfg.similarity.options_for("rsa")["comparison"] == "spearman"  # the options model's default
    assert "toy" in BACKBONES.names() and METRICS.get("toy_norms").kind == "similarity"


def test_workers_see_the_drivers_registrations(cfg: PipelineConfig) -> None:
    ensure_ray(cfg.ray)  # what every pipeline does before its first Ray task

    @ray.remote
    def in_worker() -> tuple[str, str]:
        return BACKBONES.get("toy").__qualname__, METRICS.get("toy_norms").title

    assert ray.get(in_worker.remote()) == ("ToyGNN", "embedding-norm r")


def test_tiny_pipeline_runs_on_the_toy_backbone(result: PipelineResult) -> None:
    names = result.tasks
    assert len(names) >= 2 and set(result.model_dirs) == set(names)
    for directory in result.model_dirs.values():
        assert json.loads((Path(directory) / "config.json").read_text())["backbone"] == "toy"
    assert all(np.isfinite(m["best_val_mae"]) for m in result.models.values())
    assert set(result.matrices) == {"rsa", "toy_norms", "csi_graph"} and result.kinds["toy_norms"] == "similarity"
    for matrix in result.matrices.values():
        assert matrix.shape == (len(names), len(names)) and np.all(np.isfinite(matrix))
    assert result.metric == "toy_norms" and np.allclose(np.diag(result.similarity), 1.0)
    assert result.selection is not None and set(result.selection.subset) <= set(names)
    assert (result.paths["json"].parent / "toy_norms_heatmap.png").is_file()


def test_finetune_cell_on_the_toy_backbone(cfg: PipelineConfig, result: PipelineResult) -> None:
    r = finetune_once(cfg, "alpha", ["mu"], 30, 0, Console(quiet=True))
    assert r["finetuned"]["recipe"] == "mu"
    assert np.isfinite(r["scratch"]["test_mae"]) and np.isfinite(r["finetuned"]["test_mae"])


def test_registry_get_is_a_one_line_error_listing_names() -> None:
    table: Registry[int] = Registry("widget", {"b": 2, "a": "json:dumps"})
    assert table.get("a") is json.dumps and table.get("b") == 2
    with pytest.raises(TasksimError) as info:
        table.get("c")
    assert str(info.value) == "unknown widget 'c'; registered: a, b"
    assert pickle.loads(pickle.dumps(BACKBONES)) is BACKBONES  # a worker gets its own, never a stale copy


class NearestSourceStudy(Study):
    """A toy study: per target, scratch against fine-tuning from the source the selection metric ranks
    first, at the largest training size; registered from this file, run through the CLI."""

    @classmethod
    def needs_similarity(cls, cfg: PipelineConfig) -> bool:
        return True

    def plan(self, ctx: Context) -> list[Job]:
        assert ctx.similarity is not None
        size, self.picks = ctx.run.cfg.transfer.sizes[-1], {}
        for t in ctx.data.targets:
            others = [s for s in ctx.data.sources if s != t]
            self.picks[t] = max(others, key=dict(zip(others, ctx.similarity.row(t, others))).__getitem__)
        return [(ctx.data.cell(t, 0, size), r) for t in ctx.data.targets
                for r in (SCRATCH, ctx.from_task(self.picks[t]))]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        mae = {(c["target"], c["recipe"]): c["test_mae"] for c in done.cells}
        return {t: {"source": s, "scratch": mae[(t, "scratch")], "finetuned": mae[(t, s)]}
                for t, s in self.picks.items()}

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        return Section(["## Nearest source", "", "| target | source | scratch | fine-tuned |", "|---|---|---|---|",
                        *[f"| {t} | {r['source']} | {r['scratch']:.4g} | {r['finetuned']:.4g} |"
                          for t, r in result.items()], ""])


def test_a_study_registered_here_runs_end_to_end_through_the_cli(cfg: PipelineConfig, result: PipelineResult) -> None:
    """No library edit: the study and its verb come from the registration, the runner plans and runs
    its cells on Ray and the transfer report carries its section."""
    from typer.testing import CliRunner

    from tasksim_ray.cli import app
    from tasksim_ray.cli.transfer import add_study_verbs

    STUDIES.register("nearest", StudySpec(NearestSourceStudy, "nearest-source", "Scratch vs the nearest source."))
    add_study_verbs()
    sets = [f"workdir={cfg.workdir}", "model.backbone=toy", "model.params={hidden: 16}",
            "data.targets=[mu, alpha, homo]", "similarity.metrics=[rsa, toy_norms, csi_graph]",
            "similarity.bootstrap.n_boot=0", "selection.metric=toy_norms", "train.max_epochs=2",
            "similarity.options={toy_norms: {power: 2}}",
            "transfer.tasks=[mu, alpha]"]
    out = CliRunner().invoke(app, ["nearest-source", str(TINY_CONFIG), *[a for s in sets for a in ("--set", s)]])
    assert out.exit_code == 0, out.output
    report = json.loads((Path(cfg.workdir) / "report" / "transfer" / "nearest.json").read_text())["nearest"]
    assert set(report) == {"mu", "alpha"}
    for t, r in report.items():
        assert r["source"] in result.tasks and r["source"] != t
        assert np.isfinite(r["scratch"]) and np.isfinite(r["finetuned"])
    assert "## Nearest source" in (Path(cfg.workdir) / "report" / "transfer" / "nearest.md").read_text()
