"""Config of the transfer experiments: fine-tuning, budgeted multi-task pretraining, mixture of
experts and the fine-tuning variants the strategies study compares."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, ValidationError, model_serializer, model_validator

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.config.base import first_error as _first_error
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import BACKBONES, FOUNDATION_MODELS, STUDIES

# FinetuneConfig fields added after cells were cached: left out of its dump at their defaults, so the
# cells of recipes that do not use them keep their cache keys
_LATER_FIELDS = ("regularizers", "added_layers", "head_lr", "warmup_epochs", "feature_norm", "keep_readout")


class RegularizerConfig(_Strict):
    """L2-SP pulls transferred weights back to the pretrained ones; BSS shrinks the k smallest
    singular values of the batch feature matrix. ``none`` by default."""

    kind: Literal["none", "l2sp", "bss"] = "none"
    """`l2sp`: lambda |w - w0|^2 on the transferred weights; `bss`: penalise the k smallest squared singular values
    of the batch feature matrix; `none`."""
    weight: float = Field(default=0.01, ge=0)
    """The regulariser's weight lambda."""
    bss_k: int = Field(default=1, ge=1)
    """BSS: how many of the smallest singular values are penalised."""


class FinetuneConfig(_Strict):
    """How a target model is trained from a pretrained one (or from scratch, the baseline).

    ``strategy``: full (everything), head (new head, encoder frozen), last (last encoder layer +
    head), layers (head + parameters matching ``layers`` glob patterns). ``gradual_unfreeze`` > 0
    starts from the head and unfreezes one more encoder layer group every that many epochs.
    ``llrd`` multiplies the learning rate by this factor per layer group below the head."""

    strategy: Literal["full", "head", "last", "layers"] = "full"
    """Which parameters train: `full`, `head` (new head, encoder frozen), `last` (last encoder layer + head) or
    `layers` (head + parameters matching `layers`)."""
    layers: list[str] = Field(default_factory=list)
    """Glob patterns of parameter names that train with strategy `layers`."""
    gradual_unfreeze: int = Field(default=0, ge=0)
    """Start from the head and unfreeze one more encoder layer group every this many epochs (0: off)."""
    llrd: float | None = Field(default=None, gt=0, le=1)
    """Layer-wise learning-rate decay: multiply the learning rate by this per layer group below the head (null: off)."""
    regularizer: RegularizerConfig = RegularizerConfig()
    """A regulariser towards the pretrained model."""
    regularizers: list[RegularizerConfig] = Field(default_factory=list)
    """Several regularisers at once, their penalties summed (L2-SP and BSS together, the MACE-MP fine-tuning
    paper's recipe); use this or `regularizer`, not both."""
    added_layers: int = Field(default=0, ge=0)
    """Hidden layers (the encoder's width, ReLU) added between the encoder and the fresh head, training with the
    head (the ALIGNN PT/FT paper's MPT fine-tuning adds 2)."""
    lr: float = Field(default=1e-3, gt=0)
    """Learning rate (of the encoder when `head_lr` is set)."""
    head_lr: float | None = Field(default=None, gt=0)
    """Discriminative learning rates: the head's learning rate, the encoder's being `lr` (null: `lr` for all)."""
    warmup_epochs: int = Field(default=0, ge=0)
    """Every learning rate ramps linearly from 1/(warmup_epochs+1) of its value over this many epochs (0: off)."""
    feature_norm: bool = False
    """Standardise the graph features at the encoder/head boundary: a fixed affine layer, fitted on the training
    crystals' features of the starting encoder, in front of the head (every arm alike, scratch included)."""
    keep_readout: bool = False
    """Start the head from the pretrained model's own readout (its hidden layers; a fresh output layer) where the
    backbone has one (`pretrained_readout`), instead of a fresh MLP."""
    max_epochs: int = Field(default=40, ge=1)
    """Most epochs per cell."""
    patience: int = Field(default=8, ge=1)
    """Early stopping: epochs without a better validation MAE."""
    batch_size: int = Field(default=50, gt=0)
    """Samples per batch."""

    @model_validator(mode="after")
    def _layers_given(self) -> FinetuneConfig:
        if self.strategy == "layers" and not self.layers:
            raise ValueError("finetune.layers must list parameter-name patterns when strategy is 'layers'")
        if self.regularizers and self.regularizer.kind != "none":
            raise ValueError("finetune: give regularizer or regularizers, not both")
        if self.keep_readout and self.feature_norm:
            raise ValueError("finetune: keep_readout reads the encoder's own features; feature_norm would rescale them")
        kinds = [r.kind for r in self.regularizers]
        if "none" in kinds or len(set(kinds)) < len(kinds):
            raise ValueError(f"finetune.regularizers: each of l2sp, bss at most once, got {kinds}")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        for key in _LATER_FIELDS:
            if key in out and not out[key]:
                del out[key]
        return out

    def penalties(self) -> list[RegularizerConfig]:
        """The regularisers this recipe applies: ``regularizers``, or ``regularizer`` unless it is none."""
        return list(self.regularizers) or ([self.regularizer] if self.regularizer.kind != "none" else [])

    def with_weights(self, weights: dict[str, float]) -> FinetuneConfig:
        """This recipe at a grid point: its regularisers' weights replaced (kind -> weight) and, for the
        learning-rate grid, ``lr`` (the head's too, at the same ratio, when ``head_lr`` is set)."""
        update: dict[str, Any] = {}
        if "lr" in weights:
            update["lr"] = weights["lr"]
            if self.head_lr is not None:
                update["head_lr"] = self.head_lr * weights["lr"] / self.lr
        regs = [r.model_copy(update={"weight": weights.get(r.kind, r.weight)}) for r in self.penalties()]
        if not regs:
            return self.model_copy(update=update)
        return self.model_validate(self.model_dump() | update | {"regularizer": RegularizerConfig().model_dump(),
                                                                 "regularizers": [r.model_dump() for r in regs]})


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


class TransferConfig(_Strict):
    """The transfer experiments: learning curves over (target, recipe, size, fold) cells, or (the
    ``methods`` study) each of ``methods`` per task and split seed on the whole training split.

    ``variants`` are fine-tuning recipes compared by the strategies study, each a set of
    overrides of ``finetune``; ``strategy_pairs`` the (target, source) pairs they run on."""

    tasks: list[str] | None = None
    """Kept tasks that take part (null: all kept tasks)."""
    sizes: list[int] = Field(default_factory=lambda: [100, 300, 1000], min_length=2)
    """Training-set sizes of the learning curves (increasing)."""
    folds: int = Field(default=2, ge=1)
    """Folds (seeded permutations of the training split) each cell is repeated over."""
    n_val: int = Field(default=500, gt=0)
    """Validation molecules per cell (early stopping)."""
    n_test: int = Field(default=1000, gt=0)
    """Test molecules per cell (the reported MAE)."""
    finetune: FinetuneConfig = FinetuneConfig()
    """How a target model is trained from a pretrained one, or from scratch."""
    budget: BudgetConfig = BudgetConfig()
    """Budgeted multi-task pretraining."""
    subset: SubsetStudyConfig = SubsetStudyConfig()
    """The subset study's arms and extra task sets."""
    matrix: MatrixStudyConfig = MatrixStudyConfig()
    """The matrix study's fixed similarity and gain thresholds."""
    moe: MoEConfig = MoEConfig()
    """The mixture of experts."""
    scratch: ScratchConfig = ScratchConfig()
    """The from-scratch baseline's own optimiser settings."""
    sources: SourcesConfig = SourcesConfig()
    """Where transferred models come from."""
    standardize: Literal["train", "train_val"] = "train"
    """Labels are standardised on `train`, or on `train_val` (the published MoE code)."""
    objective: Literal["auto", "regression", "binary"] = "auto"
    """Methods and foundation studies: `binary` trains every target with the logistic loss and scores it by ROC-AUC
    and accuracy (labels must be 0/1); `auto` does so for a target whose labels are all 0 or 1."""
    # sources: fine-tune from each published source in turn (the per-source transfer a recommendation is scored on);
    # variants: fine-tune each ``foundation`` model with each of ``variants`` (the foundation fine-tuning study)
    methods: list[Literal["scratch", "finetune", "moe", "sources", "variants"]] = Field(
        default_factory=lambda: ["scratch", "finetune", "moe"], min_length=1)
    """The methods study's arms: `scratch`, `finetune`, `moe`, `sources` (fine-tune from each published source in
    turn) or `variants` (each `foundation` model with each of `variants`)."""
    recipes: dict[str, RecipeConfig] = Field(default_factory=dict)
    """The methods study's arms by name, in full (instead of `methods`): each a `scratch`, `finetune`,
    `best_of` or `moe` recipe over named published extractors (Tables 1-4 of the MoE paper)."""
    studies: list[str] | None = None
    """What `tasksim study` runs: names in `tasksim_ray.registry.STUDIES` (null: matrix, subset, moe, and
    strategies when `strategy_pairs` is set)."""
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: dict(DEFAULT_VARIANTS), min_length=1)
    """Named fine-tuning recipes compared by the strategies study, each a set of overrides of `finetune`."""
    strategy_pairs: list[tuple[str, str]] = Field(default_factory=list)
    """The (target, source) pairs the strategies study runs on."""
    foundation: list[str] = Field(default_factory=list)
    """Shipped foundation models (`FOUNDATION_MODELS` names) that are sources too."""
    ood: list[str] = Field(default_factory=list)
    """PT/FT study: targets that are never a source (out of distribution)."""
    task_groups: dict[str, list[str]] = Field(default_factory=dict)
    """Named groups of tasks (a source database, a dimensionality): an `ood` target takes no source, pairwise or in
    MPT, that shares a group with it."""
    ptft: PTFTConfig = PTFTConfig()
    """The PT/FT study's pairs, pretraining-size sweep and MPT fine-tuning head."""
    penalty_grid: dict[str, dict[Literal["l2sp", "bss"], list[float]]] = Field(default_factory=dict)
    """Per variant, the weights searched for each of its regularisers (kind -> weights): every combination trains,
    and per task and split seed the one with the lowest validation MAE is reported under the variant's name."""
    lr_grid: list[float] = Field(default_factory=list)
    """Foundation study: learning rates every arm without a `penalty_grid` (scratch included) trains with; per arm,
    task and split seed the one with the lowest validation MAE is its result (`head_lr` keeps its ratio to `lr`)."""
    grid_seeds: Literal["all", "first"] = "all"
    """`all`: the grids (`lr_grid`, `penalty_grid`) train on every split seed; `first`: on the first split seed
    only, and the other seeds train each arm at the point validation chose there (per arm and task)."""
    variant_models: dict[str, list[str]] = Field(default_factory=dict)
    """Foundation study: a variant that runs on only these foundation models (by variant name; default: every one)."""
    foundation_scratch: bool | list[str] = False
    """Foundation study: each foundation model's own architecture from random initialisation too (`<name>:
    scratch`), the baseline its fine-tuning is paired with (true: every model; a list: these)."""
    probe: bool = False
    """Foundation study: a linear probe of each foundation model (frozen encoder, graph features standardised on
    the training split, ridge with its alpha chosen on validation) beside the other arms."""
    foundation_files: dict[str, FoundationFileConfig] = Field(default_factory=dict)
    """Foundation models from files the user brings, by name; name them in `foundation` too."""
    paper_tables: list[PaperTableConfig] = Field(default_factory=list)
    """Papers' tables the report prints ours beside (see `tasksim_ray.papers`)."""
    num_cpus: float = Field(default=1.0, gt=0)
    """CPUs each transfer cell asks Ray for."""
    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs (fractions allowed) each transfer cell asks Ray for."""

    @model_validator(mode="after")
    def _sizes_increase(self) -> TransferConfig:
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or self.sizes[0] < 2:
            raise ValueError("transfer.sizes must be increasing training-set sizes of at least 2")
        for target, source in self.strategy_pairs:
            if target == source:
                raise ValueError(f"transfer.strategy_pairs: target '{target}' cannot be its own source")
        if self.tasks is not None and (stray := [t for t in self.ood if t not in self.tasks]):
            raise ValueError(f"transfer.ood: {stray} are not in transfer.tasks")
        for name in self.studies or []:
            if name not in STUDIES:
                raise ValueError(f"transfer.studies: {STUDIES.unknown(name)}")
        for name in self.foundation:
            if name not in FOUNDATION_MODELS and name not in self.foundation_files:
                raise ValueError(f"transfer.foundation: {FOUNDATION_MODELS.unknown(name)} (or a key of "
                                 "transfer.foundation_files)")
        if self.recipes and "methods" in self.model_fields_set:
            raise ValueError("transfer: give the methods study's arms as recipes or as methods, not both")
        for name, recipe in self.recipes.items():
            try:
                recipe.moe_config(self.moe)
            except ValueError as exc:
                raise ValueError(f"transfer.recipes.{name}: {exc}") from None
        if "variants" in self.methods and not self.foundation:
            raise ValueError("transfer.methods 'variants' fine-tunes the transfer.foundation models: name one there")
        variants = self.variant_configs()
        for name, grid in self.penalty_grid.items():
            kinds = [r.kind for r in variants[name].penalties()] if name in variants else None
            if kinds is None or not set(grid) <= set(kinds) or any(not w for w in grid.values()):
                raise ValueError(f"transfer.penalty_grid '{name}': grid its variant's regularisers ({kinds}) with at "
                                 "least one weight each")
        for name, models in self.variant_models.items():
            if name not in variants or (stray := [m for m in models if m not in self.foundation]):
                raise ValueError(f"transfer.variant_models '{name}': name a variant and transfer.foundation models")
        self._check_groups()
        return self

    def _check_groups(self) -> None:
        named = set(self.tasks or []) if self.tasks is not None else None
        for group, members in self.task_groups.items():
            if named is not None and (stray := [t for t in members if t not in named]):
                raise ValueError(f"transfer.task_groups '{group}': {stray} are not in transfer.tasks")
        pairs = [*self.strategy_pairs, *(self.ptft.pairs or [])]
        for target, source in pairs:
            if target == source:
                raise ValueError(f"transfer.ptft.pairs: target '{target}' cannot be its own source")
            if target in self.ood and (shared := self.shared_groups(target, source)):
                raise ValueError(f"pair ({target}, {source}): source shares task group {shared} with the "
                                 "out-of-distribution target")

    def shared_groups(self, a: str, b: str) -> list[str]:
        """The ``task_groups`` both tasks are in."""
        return [g for g, members in self.task_groups.items() if a in members and b in members]

    def study_names(self) -> list[str]:
        """What ``tasksim study`` runs: ``studies``, else the whole design on the pipeline's tasks (the
        gain matrix, the subset study, the mixture, and the variants when pairs are named)."""
        return self.studies or ["matrix", "subset", "moe"] + (["strategies"] if self.strategy_pairs else [])

    def variant_configs(self) -> dict[str, FinetuneConfig]:
        """Each variant as a full fine-tuning config: ``finetune`` with the variant's keys replaced."""
        out = {}
        for name, override in self.variants.items():
            try:
                out[name] = FinetuneConfig.model_validate(self.finetune.model_dump() | override)
            except ValidationError as exc:
                raise ValueError(f"variant '{name}': {_first_error(exc)}") from None
        return out
