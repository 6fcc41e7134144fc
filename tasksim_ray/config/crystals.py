"""Config of the crystal mixture-of-experts study (Chang, Wang & Ertekin, npj Comput. Mater. 2022).

Defaults are the published settings (rees-c/MoE ``main.py``, ``main_singletask.py``, README):
1000 epochs with early stopping after 500 without a better validation MAE, batch 250, Adam with
cosine annealing for transfer and MoE (head 1e-2, unfrozen last convolution 5e-3), a three-layer
softplus head, k = 4 of the 18 extractors, gate penalty 0.01 (G^T G - 1)^2 on the sparse gate
vector G; the single-task baseline is SGD (lr 0.02, momentum 0.9) with cosine annealing to 1e-5.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasksim_ray.config.base import Strict

Method = Literal["stl", "tl", "moe"]


class CrystalMoEConfig(Strict):
    """STL vs TL vs MoE on the small crystal tasks, per task and published split seed.

    ``tasks``: file stems in ``tasks_dir`` (None: every MoE task file there). ``experts``: file
    names in ``extractors_dir`` (None: every ``*.pth.tar``). ``freeze_last_conv``: also freeze each
    extractor's last convolution, so its pooled features are computed once and only the gate and
    head train (the fast laptop setting; the published one trains the last convolution)."""

    tasks_dir: str = "../shared/data/crystals/moe_tasks"
    splits_dir: str = "../shared/data/crystals/moe_splits"
    extractors_dir: str = "../shared/data/models/cgcnn_moe_extractors"
    tl_extractor: str = "singletask_eform_32hfealen_best_model.pth.tar"
    tasks: list[str] | None = None
    experts: list[str] | None = None
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    methods: list[Method] = Field(default_factory=lambda: ["stl", "tl", "moe"], min_length=1)
    max_epochs: int = Field(default=1000, ge=1)
    patience: int = Field(default=500, ge=1)
    stl_max_epochs: int | None = Field(default=None, ge=1)  # None: max_epochs
    batch_size: int = Field(default=250, gt=0)
    head_layers: int = Field(default=3, ge=1)
    head_lr: float = Field(default=1e-2, gt=0)
    expert_lr: float = Field(default=5e-3, gt=0)
    stl_optimizer: Literal["sgd", "adam"] = "sgd"
    stl_lr: float = Field(default=0.02, gt=0)
    stl_momentum: float = Field(default=0.9, ge=0)
    stl_min_lr: float = Field(default=1e-5, ge=0)
    k: int = Field(default=4, ge=1)
    penalty: float = Field(default=0.01, ge=0)
    penalty_on: Literal["gates", "theta"] = "gates"
    freeze_last_conv: bool = False
    num_cpus: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _distinct(self) -> CrystalMoEConfig:
        for name in ("seeds", "methods"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"crystal_moe.{name} has duplicates: {values}")
        return self

    @property
    def stl_epochs(self) -> int:
        return self.stl_max_epochs or self.max_epochs
