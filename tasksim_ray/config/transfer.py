"""Config of the transfer experiments: fine-tuning, budgeted multi-task pretraining, mixture of
experts and the fine-tuning variants the strategies study compares."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    create_model,
    model_serializer,
    model_validator,
)

from tasksim_ray.config.base import Strict as _Strict
from tasksim_ray.config.base import first_error as _first_error
from tasksim_ray.config.studies import (
    DEFAULT_VARIANTS,
    FoundationFileConfig,
    PaperTableConfig,
    RecipeConfig,
    ScratchConfig,
    SourcesConfig,
)
from tasksim_ray.errors import TasksimError
from tasksim_ray.registry import FOUNDATION_MODELS, STUDIES

if TYPE_CHECKING:
    from tasksim_ray.config.studies import BudgetConfig, MatrixStudyConfig, MoEConfig, PTFTConfig, SubsetStudyConfig

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


class TransferBase(_Strict):
    """The transfer experiments: learning curves over (target, recipe, size, fold) cells, or (the
    ``methods`` study) each of ``methods`` per task and split seed on the whole training split.

    ``variants`` are fine-tuning recipes compared by the strategies study, each a set of
    overrides of ``finetune``; ``strategy_pairs`` the (target, source) pairs they run on.
    Each study with options of its own has its section too, ``transfer.<study>``, from its
    ``StudySpec.config`` in ``registry.STUDIES`` (``TransferConfig`` adds them)."""

    if TYPE_CHECKING:  # the built-in studies' sections, for the type checker (the registry adds them)
        budget: BudgetConfig
        subset: SubsetStudyConfig
        matrix: MatrixStudyConfig
        moe: MoEConfig
        ptft: PTFTConfig

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
    def _sizes_increase(self) -> TransferBase:
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
        default_methods = type(self).model_fields["methods"].get_default(call_default_factory=True)
        if self.recipes and "methods" in self.model_fields_set and self.methods != default_methods:
            # (a run's recorded config writes every default, the unused methods list too: that reloads)
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


def _sections() -> tuple[tuple[str, type[BaseModel]], ...]:
    """Each registered study's own section (its ``StudySpec.config``), by study name."""
    out = []
    for name in STUDIES.names():
        model = STUDIES.get(name).config_model
        if model is None:
            continue
        if name in TransferBase.model_fields:
            raise TasksimError(f"study '{name}': transfer.{name} is a key every study shares; name the study otherwise")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TasksimError(f"study '{name}': its config must be a pydantic model, got {model!r}")
        out.append((name, model))
    return tuple(out)


@cache
def _with_sections(base: type[TransferBase], sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[TransferBase]:
    """``base`` with one field per study section, defaulting to the model's defaults."""
    fields: Any = {name: (model, Field(default=model(), description=f"The `{name}` study's own options."))
                   for name, model in sections}
    return create_model("TransferConfig", __base__=base, __module__=__name__, __doc__=TransferBase.__doc__, **fields)


if TYPE_CHECKING:
    TransferConfig = TransferBase
else:  # the sections of the studies registered on import (the built-in ones)
    TransferConfig = _with_sections(TransferBase, _sections())


def transfer_model() -> type[TransferConfig]:
    """``TransferConfig``, or a subclass with the sections of studies registered (or replaced) since import."""
    late = tuple((name, model) for name, model in _sections()
                 if getattr(TransferConfig.model_fields.get(name), "annotation", None) is not model)
    return _with_sections(TransferConfig, late) if late else TransferConfig
