"""Config of each study's own options (the budget, the subset and matrix studies, the mixture of
experts and its named recipes, the scratch baseline, sources, PT/FT, foundation files, papers' tables),
kept apart from the shared fine-tuning config. A study's own section (``transfer.budget``, ``.subset``,
``.matrix``, ``.moe``, ``.ptft``) is named by its ``StudySpec.config`` in ``registry.STUDIES``, from which
``TransferConfig`` adds it; the rest are keys every study shares."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.config.base import first_error as _first_error
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import BACKBONES


class BudgetConfig(_Strict):
    """Multi-task pretraining under a fixed budget C = N samples per epoch x E epochs: give C and
    one of ``samples``, ``epochs`` or ``splits`` (a list of [N, E] pairs to try)."""

    total: int = Field(default=60_000, gt=0)
    """The budget C: samples seen in pretraining, N samples per epoch x E epochs."""
    samples: int | None = Field(default=None, gt=0)
    """N, samples per epoch (E = C / N)."""
    epochs: int | None = Field(default=None, gt=0)
    """E, epochs (N = C / E); 10 when none of samples/epochs/splits is given."""
    splits: list[tuple[int, int]] | None = None
    """Several [N, E] pairs to try, each multiplying to `total`."""
    sampling: Literal["uniform", "proportional", "temperature"] = "uniform"
    """How each epoch's N samples are shared among the subset's tasks: `uniform`, `proportional` to their pools, or
    by `temperature`."""
    temperature: float = Field(default=2.0, gt=0)
    """Temperature sampling: weights pool_size^(1/T); 1 is proportional, large values approach uniform."""
    pool_per_task: int = Field(default=5000, gt=0)
    """Labelled training molecules per source task that pretraining may draw from."""
    lr: float = Field(default=1e-3, gt=0)
    """Pretraining learning rate."""
    batch_size: int = Field(default=50, gt=0)
    """Pretraining batch size (the global batch with several workers)."""
    mixture: float | None = Field(default=None, gt=0, lt=1)
    """Budget study: also pretrain paper 002's mixture, the picked (aligned) source plus the least aligned source,
    this share of the labels from the latter (the paper: 1M OC22 added to 2M ANI-1x, 1/3), under the same budget;
    null: no mixture arm."""
    loss: Literal["mse", "l1"] = "mse"
    """Pretraining loss on the standardised labels, missing labels masked: `mse`, or `l1` (the ALIGNN PT/FT
    paper's Eq. 1)."""
    workers: int = Field(default=1, ge=1)
    """Above 1: data-parallel pretraining on this many Ray Train workers (DDP), same global batch."""
    worker_cpus: float = Field(default=1.0, gt=0)
    """CPUs per Ray Train worker."""
    worker_gpus: float = Field(default=0.0, ge=0)
    """GPUs per Ray Train worker."""

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
    """Experts kept by the top-k gate."""
    penalty: float = Field(default=0.01, ge=0)
    """Weight lambda of the gate penalty lambda (v^T v - 1)^2."""
    penalty_on: Literal["theta", "gates"] = "theta"
    """What the penalty applies to: the logits `theta`, or the sparse `gates` (the published code's choice)."""
    init: Literal["ones", "uniform", "similarity"] = "uniform"
    """Gate logits start at `ones` (the paper: uniform gates at k = m; ties at k < m go to the lowest
    expert indices), `uniform` (ones plus seeded 1e-3 noise, unit norm: ties broken at random), or the
    target's row of the `similarity` matrix."""
    aggregation: Literal["add", "concat", "ensemble"] = "add"
    """How the gated experts combine: `add` (the gated sum of features, the paper's choice), `concat`
    (the gated features side by side), or `ensemble` (a head per expert, the gated sum of predictions)."""
    expert_lr: float = Field(default=5e-3, gt=0)
    """Learning rate of the experts' trainable layers."""
    head_lr: float = Field(default=1e-2, gt=0)
    """Learning rate of the gate and the head."""
    train_last: bool = True
    """Each expert's last encoder layer trains (else the experts are frozen and their features computed once)."""
    head_layers: int | None = Field(default=None, ge=1)
    """null: the model config's MLP head; n: the published head of n softplus-separated linear layers."""
    head_hidden: int = Field(default=32, gt=0)
    """Width of the published head's hidden layers."""
    schedule: Literal["constant", "cosine"] = "constant"
    """`cosine` anneals both learning rates to 0 over `finetune.max_epochs`; `constant` keeps them."""


PerTarget = dict[str, str]
PerTargetList = dict[str, list[str]]


class RecipeConfig(_Strict):
    """One named recipe of the methods study (``transfer.recipes``). File names are published
    extractors in ``transfer.sources.path``; a mapping gives each target its own (it must name every
    target). ``scratch``: single-task learning from random initialisation; ``finetune``: from
    ``source``; ``best_of``: fine-tuned from each of ``sources`` in turn, reported each and as the best
    per target (the paper's Best TL-(3)); ``moe``: a mixture over ``experts`` (null: every extractor
    of ``transfer.sources``) with ``moe`` over ``transfer.moe``'s keys."""

    kind: Literal["scratch", "finetune", "best_of", "moe"]
    """What the recipe trains."""
    source: str | PerTarget | None = None
    """`finetune`: the extractor file it starts from (or one per target)."""
    sources: list[str] | PerTargetList | None = None
    """`best_of`: the extractor files fine-tuned from in turn (or a list per target)."""
    experts: list[str] | PerTargetList | None = None
    """`moe`: the extractor files mixed (or a list per target); null: every extractor of `transfer.sources`."""
    moe: dict[str, Any] = Field(default_factory=dict)
    """`moe`: keys of `transfer.moe` this recipe sets otherwise (`k`, `aggregation`, `init`, ...)."""

    @model_validator(mode="after")
    def _fields_match_kind(self) -> RecipeConfig:
        given = {f for f in ("source", "sources", "experts") if getattr(self, f) is not None} | (
            {"moe"} if self.moe else set())
        allowed = {"scratch": set(), "finetune": {"source"}, "best_of": {"sources"},
                   "moe": {"experts", "moe"}}[self.kind]
        if given - allowed:
            raise ValueError(f"a {self.kind} recipe takes no {', '.join(sorted(given - allowed))}")
        needed = {"finetune": "source", "best_of": "sources"}.get(self.kind)
        if needed and needed not in given:
            raise ValueError(f"a {self.kind} recipe needs '{needed}'")
        return self

    def moe_config(self, base: MoEConfig) -> MoEConfig:
        """``base`` with this recipe's MoE keys over it."""
        try:
            return MoEConfig.model_validate(base.model_dump() | self.moe)
        except ValidationError as exc:
            raise ValueError(f"moe: {_first_error(exc)}") from None


def for_target(value: Any, target: str, what: str) -> Any:
    """A recipe field's value for one target: the value itself, or its entry in a per-target mapping."""
    if not isinstance(value, dict):
        return value
    if target not in value:
        raise TasksimError(f"transfer.recipes: {what} names no entry for target '{target}' (has: {', '.join(value)})")
    return value[target]


class ScratchConfig(_Strict):
    """The from-scratch baseline's own optimiser (None: ``finetune``'s value): Adam or SGD with
    momentum, annealed by cosine to ``min_lr`` when that is set (0: to zero, as CosineAnnealingLR's
    default), stepped per epoch over ``max_epochs``. The loss is the training loop's MSE on the
    standardised labels. The MoE paper's STL (section 3.2): ``optimizer: adam, lr: 0.01,
    min_lr: 0``, batch 250, 1000 epochs, patience 500; its public code's STL differs (SGD lr 0.02,
    momentum 0.9, cosine to 1e-5)."""

    optimizer: Literal["adam", "sgd"] = "adam"
    """The from-scratch baseline's optimiser: Adam, or SGD with momentum."""
    lr: float | None = Field(default=None, gt=0)
    """Its learning rate (null: `finetune.lr`)."""
    momentum: float = Field(default=0.9, ge=0)
    """SGD momentum."""
    min_lr: float | None = Field(default=None, ge=0)
    """Anneal the learning rate by cosine down to this (null: constant)."""
    max_epochs: int | None = Field(default=None, ge=1)
    """Most epochs (null: `finetune.max_epochs`)."""
    patience: int | None = Field(default=None, ge=1)
    """Early stopping patience (null: `finetune.patience`)."""
    batch_size: int | None = Field(default=None, gt=0)
    """Batch size (null: `finetune.batch_size`)."""


class SourcesConfig(_Strict):
    """Where transferred models come from: ``tasks`` (the per-task models the pipeline trains),
    ``published`` (a folder ``path`` of CGCNN ``*.pth.tar`` checkpoints; ``names`` picks files, None
    = all). ``finetune_from``: the one source fine-tuning starts from in the methods study."""

    kind: Literal["tasks", "published"] = "tasks"
    """`tasks`: the per-task models the pipeline trains; `published`: a folder of CGCNN checkpoints."""
    path: str | None = None
    """The folder of published `*.pth.tar` checkpoints (kind `published`)."""
    names: list[str] | None = None
    """Which checkpoint files to use (null: all)."""
    finetune_from: str | None = None
    """The one source fine-tuning starts from in the methods study."""

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


class PTFTConfig(_Strict):
    """The PT/FT study's protocol (Devi, Butler & Sai Gautam): the pairs it fine-tunes, the sweep over a
    source's pretraining size, and the layers MPT fine-tuning adds."""

    pairs: list[tuple[str, str]] | None = None
    """(target, source) pairs fine-tuned pairwise (null: every in-distribution pair); with pairs, the study's targets
    are their targets and the `ood` targets (which take every allowed source unless a pair names them)."""
    pt_sources: list[str] = Field(default_factory=list)
    """Sources whose pretraining size is swept (the paper: FE and BG)."""
    pt_sizes: list[int] = Field(default_factory=list)
    """Pretraining sizes of the sweep: each `pt_sources` task pretrained alone on the first n crystals of its
    pretraining pool (`budget.pool_per_task` caps it), then fine-tuned at the largest of `sizes` on each target it is a
    pairwise source of."""
    pt_epochs: int = Field(default=30, ge=1)
    """Epochs of each sweep pretraining (exactly that many; the best validation epoch is kept)."""
    mpt_added_layers: int = Field(default=0, ge=0)
    """Hidden layers added before the fresh head when fine-tuning from MPT (the paper: 2)."""
    mpt_epochs: int | None = Field(default=None, ge=1)
    """MPT pretrains on every label of the union of its sources' pools each epoch, for this many epochs, so it
    sees at least as much data as any pairwise source (the paper: all 132,270 datapoints); null: the first split
    of `budget`."""
    paper_transform: list[Literal["standardise", "min-max", "log", "log1p"]] = ["standardise", "min-max"]
    """The label transform of the paper's reported MAEs (`tasksim_ray.data.transforms`), fitted on each target's
    training split: rows beside the paper (`<target>@<size>/paper`) are in its units (paper 004: standardised, then
    min-max normalised)."""
    mpt_loss: Literal["mse", "l1"] = "mse"
    """MPT's pretraining loss (the paper's Eq. 1: `l1`)."""
    mpt_batch_size: int | None = Field(default=None, gt=0)
    """MPT's pretraining batch size (null: `budget.batch_size`; the paper: 64 above 1,000 points, 16 below)."""

    @model_validator(mode="after")
    def _sweep(self) -> PTFTConfig:
        if bool(self.pt_sources) != bool(self.pt_sizes):
            raise ValueError("ptft: pt_sources and pt_sizes go together (the sources swept, and their sizes)")
        if any(n < 2 for n in self.pt_sizes):
            raise ValueError("ptft.pt_sizes: pretraining sizes of at least 2")
        return self


class FoundationFileConfig(_Strict):
    """A foundation model the user brings as a file (a MACE-MP model, say): the backbone that reads it and that
    backbone's parameters, the file among them (e.g. `{backbone: mace, params: {foundation_file: mp.pt}}`)."""

    backbone: str = "mace"
    """The backbone that reads the file: a name in `tasksim_ray.registry.BACKBONES`."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Its constructor arguments, with the file (MACE: `foundation_file`, and `trust_pickle` for a pickle)."""

    @model_validator(mode="after")
    def _known(self) -> FoundationFileConfig:
        if self.backbone not in BACKBONES:
            raise ValueError(BACKBONES.unknown(self.backbone))
        return self


class PaperTableConfig(_Strict):
    """A paper's table or set of facts (an id of ``tasksim_ray.papers``, e.g. ``001/table3``) printed
    beside a study's results, cell by cell, with the winner per row compared."""

    table: str
    """The stored table's id (`python -m tasksim_ray.papers` lists them)."""
    study: str | None = None
    """The study whose results go beside it (null: the first study run)."""
    methods: dict[str, str] = Field(default_factory=dict)
    """The paper's column keys mapped to our method (recipe) names, where they differ."""
    aliases: dict[str, str] = Field(default_factory=dict)
    """The paper's row keys mapped to our task names, for tasks named otherwise in your data."""

    @model_validator(mode="after")
    def _known(self) -> PaperTableConfig:
        from tasksim_ray.papers import FACT_SETS, TABLES

        if self.table not in TABLES and self.table not in FACT_SETS:
            raise ValueError(f"unknown paper table '{self.table}'; stored: {', '.join([*TABLES, *FACT_SETS])}")
        return self


class SubsetStudyConfig(_Strict):
    """The subset study's arms: which pretraining protocol each task set is pretrained under, and
    which task sets besides the selected diverse subset and all other tasks (the target is removed
    from every set)."""

    arms: list[Literal["budget", "all_labels"]] = Field(default_factory=lambda: ["budget"], min_length=1)
    """`budget`: every set under the same budget C = N x E (each split of `transfer.budget`), the
    compute-matched comparison; `all_labels`: every set with each pool label of its tasks once per
    epoch for `all_labels_epochs` epochs, so a larger set sees more data (paper 000's protocol)."""
    all_labels_epochs: int | None = Field(default=None, ge=1)
    """Epochs of the `all_labels` arms (null: the epochs E of the budget's first split)."""
    extra: dict[str, list[str]] = Field(default_factory=dict)
    """Named task sets evaluated beside the selected subset, e.g. `{paper: [A, homo, cv]}` (paper 000's
    subset); each must be kept tasks."""

    @model_validator(mode="after")
    def _named_sets(self) -> SubsetStudyConfig:
        for name, tasks in self.extra.items():
            if not tasks or len(set(tasks)) != len(tasks):
                raise ValueError(f"transfer.subset.extra.{name}: give distinct task names, got {tasks}")
            if name in ("diverse subset", "all others"):
                raise ValueError(f"transfer.subset.extra: '{name}' is the name of a built-in arm")
        return self


class MatrixStudyConfig(_Strict):
    """Similarity vs gain at fixed thresholds, reported beside the F1-maximising threshold."""

    fixed_thresholds: dict[str, float] = Field(default_factory=lambda: {"rsa": 0.6})
    """Per metric, a fixed similarity threshold (a distance's: at most this is similar) for the
    confusion matrix and F1 (paper 000 Fig. 1b: RSA 0.6); metrics not computed are skipped."""
    gain_threshold: float = 0.0
    """At the fixed thresholds a pair counts as improved when its gain (%) is above this (paper 000
    Fig. 1b: 0%)."""
