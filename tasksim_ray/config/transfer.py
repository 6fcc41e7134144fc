"""Config of the transfer experiments: fine-tuning, budgeted multi-task pretraining, mixture of
experts and the fine-tuning variants the strategies study compares."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.config.base import first_error as _first_error
from tasksim_ray.registry import FOUNDATION_MODELS


class RegularizerConfig(_Strict):
    """L2-SP pulls transferred weights back to the pretrained ones; BSS shrinks the k smallest
    singular values of the batch feature matrix. ``none`` by default."""

    kind: Literal["none", "l2sp", "bss"] = "none"
    weight: float = Field(default=0.01, ge=0)
    bss_k: int = Field(default=1, ge=1)


class FinetuneConfig(_Strict):
    """How a target model is trained from a pretrained one (or from scratch, the baseline).

    ``strategy``: full (everything), head (new head, encoder frozen), last (last encoder layer +
    head), layers (head + parameters matching ``layers`` glob patterns). ``gradual_unfreeze`` > 0
    starts from the head and unfreezes one more encoder layer group every that many epochs.
    ``llrd`` multiplies the learning rate by this factor per layer group below the head."""

    strategy: Literal["full", "head", "last", "layers"] = "full"
    layers: list[str] = Field(default_factory=list)
    gradual_unfreeze: int = Field(default=0, ge=0)
    llrd: float | None = Field(default=None, gt=0, le=1)
    regularizer: RegularizerConfig = RegularizerConfig()
    lr: float = Field(default=1e-3, gt=0)
    max_epochs: int = Field(default=40, ge=1)
    patience: int = Field(default=8, ge=1)
    batch_size: int = Field(default=50, gt=0)

    @model_validator(mode="after")
    def _layers_given(self) -> FinetuneConfig:
        if self.strategy == "layers" and not self.layers:
            raise ValueError("finetune.layers must list parameter-name patterns when strategy is 'layers'")
        return self


class BudgetConfig(_Strict):
    """Multi-task pretraining under a fixed budget C = N samples per epoch x E epochs: give C and
    one of ``samples``, ``epochs`` or ``splits`` (a list of [N, E] pairs to try)."""

    total: int = Field(default=60_000, gt=0)
    samples: int | None = Field(default=None, gt=0)
    epochs: int | None = Field(default=None, gt=0)  # 10 when none of samples/epochs/splits is given
    splits: list[tuple[int, int]] | None = None
    sampling: Literal["uniform", "proportional", "temperature"] = "uniform"
    temperature: float = Field(default=2.0, gt=0)
    pool_per_task: int = Field(default=5000, gt=0)  # labelled training molecules per source task
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=50, gt=0)
    workers: int = Field(default=1, ge=1)  # > 1: data-parallel with Ray Train (DDP), same global batch
    worker_cpus: float = Field(default=1.0, gt=0)
    worker_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _default_epochs(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and all(raw.get(k) is None for k in ("samples", "epochs", "splits")):
            return {**raw, "epochs": 10}
        return raw

    @model_validator(mode="after")
    def _exact_split(self) -> BudgetConfig:
        from tasksim_ray.config.budget import resolve_splits

        resolve_splits(self.total, self.samples, self.epochs, self.splits)
        return self

    def resolved(self) -> list[tuple[int, int]]:
        """The (samples per epoch, epochs) splits this budget asks for."""
        from tasksim_ray.config.budget import resolve_splits

        return resolve_splits(self.total, self.samples, self.epochs, self.splits)


class MoEConfig(_Strict):
    """Mixture of pretrained experts: G = softmax(KeepTopK(theta, k)), penalty lambda (v^T v - 1)^2
    on v = theta or the sparse gates (``penalty_on``; the paper's Eq. 4 and the published code use
    the gates). ``init``: ``ones`` = theta exactly a vector of ones (the paper, section 2.2.2: with
    k = the number of experts the gates start exactly uniform; with k smaller, the tie is broken by
    expert order, so the first k sources start selected: ``torch.topk`` alone would break it in an
    order of its own, for 18 equal logits and k = 4 the experts 11-14 on CPU);
    ``uniform`` = ones plus seeded 1e-3 noise, unit norm (ties break at random, per seed);
    ``similarity`` = a task-similarity row, unit norm. ``aggregation`` (the paper's Table 1):
    ``add`` the gated sum of features (the paper's choice), ``concat`` the gated features side by
    side (head input m * d), ``ensemble`` one head per expert and the gated sum of their predictions
    (same gates, penalty and learning rates). ``train_last``: each expert's last encoder layer
    trains (else every expert layer is frozen and its features are computed once). ``head_layers``:
    None = the model config's MLP head; n = the published head of n softplus-separated linear layers
    of width ``head_hidden``. ``schedule: cosine`` anneals both learning rates to 0 over
    ``finetune.max_epochs``. Fine-tuning from published checkpoints is the one-expert mixture, so it
    uses these heads and rates too."""

    k: int = Field(default=2, ge=1)
    penalty: float = Field(default=0.01, ge=0)
    penalty_on: Literal["theta", "gates"] = "theta"
    init: Literal["ones", "uniform", "similarity"] = "uniform"
    aggregation: Literal["add", "concat", "ensemble"] = "add"
    expert_lr: float = Field(default=5e-3, gt=0)
    head_lr: float = Field(default=1e-2, gt=0)
    train_last: bool = True
    head_layers: int | None = Field(default=None, ge=1)
    head_hidden: int = Field(default=32, gt=0)
    schedule: Literal["constant", "cosine"] = "constant"


class ScratchConfig(_Strict):
    """The from-scratch baseline's own optimiser (None: ``finetune``'s value): Adam or SGD with
    momentum, annealed by cosine to ``min_lr`` when that is set (0: to zero, as CosineAnnealingLR's
    default), stepped per epoch over ``max_epochs``. The loss is the training loop's MSE on the
    standardised labels. The MoE paper's STL (section 3.2): ``optimizer: adam, lr: 0.01,
    min_lr: 0``, batch 250, 1000 epochs, patience 500; its public code's STL differs (SGD lr 0.02,
    momentum 0.9, cosine to 1e-5)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float | None = Field(default=None, gt=0)
    momentum: float = Field(default=0.9, ge=0)
    min_lr: float | None = Field(default=None, ge=0)
    max_epochs: int | None = Field(default=None, ge=1)
    patience: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, gt=0)


class SourcesConfig(_Strict):
    """Where transferred models come from: ``tasks`` (the per-task models the pipeline trains),
    ``published`` (a folder ``path`` of CGCNN ``*.pth.tar`` checkpoints; ``names`` picks files, None
    = all). ``finetune_from``: the one source fine-tuning starts from in the methods study."""

    kind: Literal["tasks", "published"] = "tasks"
    path: str | None = None
    names: list[str] | None = None
    finetune_from: str | None = None

    @model_validator(mode="after")
    def _path_given(self) -> SourcesConfig:
        if self.kind == "published" and not self.path:
            raise ValueError("transfer.sources.path is required when transfer.sources.kind is 'published'")
        return self


DEFAULT_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "head": {"strategy": "head"},
    "last": {"strategy": "last"},
    "gradual + LLRD": {"gradual_unfreeze": 2, "llrd": 0.8},
    "full + L2-SP": {"regularizer": {"kind": "l2sp", "weight": 0.01}},
    "full + BSS": {"regularizer": {"kind": "bss", "weight": 0.001, "bss_k": 1}},
}


class TransferConfig(_Strict):
    """The transfer experiments: learning curves over (target, recipe, size, fold) cells, or (the
    ``methods`` study) each of ``methods`` per task and split seed on the whole training split.

    ``variants`` are fine-tuning recipes compared by the strategies study, each a set of
    overrides of ``finetune``; ``strategy_pairs`` the (target, source) pairs they run on."""

    tasks: list[str] | None = None  # kept tasks that take part (default: all kept tasks)
    sizes: list[int] = Field(default_factory=lambda: [100, 300, 1000], min_length=2)
    folds: int = Field(default=2, ge=1)
    n_val: int = Field(default=500, gt=0)
    n_test: int = Field(default=1000, gt=0)
    finetune: FinetuneConfig = FinetuneConfig()
    budget: BudgetConfig = BudgetConfig()
    moe: MoEConfig = MoEConfig()
    scratch: ScratchConfig = ScratchConfig()
    sources: SourcesConfig = SourcesConfig()
    standardize: Literal["train", "train_val"] = "train"  # labels scaled on train, or train+val (published MoE)
    # sources: fine-tune from each published source in turn (the per-source transfer a recommendation is scored on);
    # variants: fine-tune each ``foundation`` model with each of ``variants`` (the foundation fine-tuning study)
    methods: list[Literal["scratch", "finetune", "moe", "sources", "variants"]] = Field(
        default_factory=lambda: ["scratch", "finetune", "moe"], min_length=1)
    studies: list[str] | None = None  # what `tasksim study` runs (None: matrix, subset, moe [, strategies])
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_VARIANTS), min_length=1)
    strategy_pairs: list[tuple[str, str]] = Field(default_factory=list)
    foundation: list[str] = Field(default_factory=list)  # shipped foundation models that are sources too
    ood: list[str] = Field(default_factory=list)  # ptft study: targets never used as a source (out of distribution)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _sizes_increase(self) -> TransferConfig:
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or self.sizes[0] < 2:
            raise ValueError("transfer.sizes must be increasing training-set sizes of at least 2")
        for target, source in self.strategy_pairs:
            if target == source:
                raise ValueError(f"transfer.strategy_pairs: target '{target}' cannot be its own source")
        if self.tasks is not None and (stray := [t for t in self.ood if t not in self.tasks]):
            raise ValueError(f"transfer.ood: {stray} are not in transfer.tasks")
        for name in self.foundation:
            if name not in FOUNDATION_MODELS:
                raise ValueError(f"transfer.foundation: {FOUNDATION_MODELS.unknown(name)}")
        if "variants" in self.methods and not self.foundation:
            raise ValueError("transfer.methods 'variants' fine-tunes the transfer.foundation models: name one there")
        self.variant_configs()
        return self

    def variant_configs(self) -> dict[str, FinetuneConfig]:
        """Each variant as a full fine-tuning config: ``finetune`` with the variant's keys replaced."""
        out = {}
        for name, override in self.variants.items():
            try:
                out[name] = FinetuneConfig.model_validate(self.finetune.model_dump() | override)
            except ValidationError as exc:
                raise ValueError(f"variant '{name}': {_first_error(exc)}") from None
        return out


