"""Fine-tuning strategies: which parameters train, at which learning rate, with which penalty.

A backbone lists its encoder layer groups from input to output (``ENCODER_LAYERS``) and has a
``head``. The strategies choose what trains: ``full`` (everything), ``head`` (the new head only),
``last`` (the last encoder group and the head), ``layers`` (the head plus parameters whose names
match glob patterns). Gradual unfreezing starts from the head and unfreezes the strategy's encoder
groups top-down, one every ``gradual_unfreeze`` epochs; layer-wise learning-rate decay gives the
group d levels below the head ``lr * llrd**d``. Discriminative rates: the head at ``head_lr``, the
encoder at ``lr`` (a pretrained encoder's weights are large and need small steps, a fresh head
large ones); ``warmup_epochs`` ramps every rate up; ``feature_norm`` puts a fixed standardising
layer in front of the head (a pretrained encoder's features can be orders of magnitude smaller
than a fresh head expects: CHGNet's readout norm gains average 0.1). Regularisers: L2-SP on the transferred weights
and batch spectral shrinkage on the graph features, alone or summed. ``added_layers`` grows the
fresh head by hidden layers before it (MPT fine-tuning in the ALIGNN PT/FT paper adds two).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from fnmatch import fnmatch

import torch
from torch import Tensor, nn

from tasksim_ray.config import FinetuneConfig, MoEConfig, RegularizerConfig, ScratchConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.models.heads import deepen_head
from tasksim_ray.models.moe import MixtureOfExperts
from tasksim_ray.training.loop import FitOptions
from tasksim_ray.training.objectives import bss_penalty, l2sp_penalty, reference_weights


def encoder_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """(group, parameter names) for each encoder layer group, input to output. A group is a module
    path prefix (``W_o``, ``convs.3``), so one block of a ModuleList can be its own group."""
    names = [n for n, _ in model.named_parameters()]
    return [(layer, [n for n in names if n == layer or n.startswith(layer + ".")]) for layer in model.ENCODER_LAYERS]


def head_names(model: nn.Module) -> list[str]:
    head = {id(p) for p in model.head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in head]


def trainable_groups(model: nn.Module, cfg: FinetuneConfig) -> list[tuple[str, list[str]]]:
    """The encoder groups this strategy trains (input to output; some may be partial)."""
    groups = encoder_groups(model)
    if cfg.strategy == "full":
        return groups
    if cfg.strategy == "head":
        return []
    if cfg.strategy == "last":
        return groups[-1:]
    chosen = [(g, [n for n in names if any(fnmatch(n, pat) for pat in cfg.layers)]) for g, names in groups]
    unmatched = [pat for pat in cfg.layers
                 if not any(fnmatch(n, pat) for _, names in groups for n in names)]
    if unmatched:
        encoder = [n for _, names in groups for n in names]
        raise TasksimError(f"finetune.layers: pattern(s) {unmatched} match no encoder parameter; "
                           f"encoder parameters: {encoder}")
    return [(g, names) for g, names in chosen if names]


def layer_drift(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Per encoder layer group, ||w - w0|| / ||w0|| against the pretrained ``reference``: which depths
    fine-tuning moved (NaN for a group whose pretrained weights are all zero)."""
    ref = dict(reference.named_parameters())
    params = dict(model.named_parameters())
    out = {}
    for group, names in encoder_groups(model):
        w = torch.cat([params[n].detach().cpu().flatten() for n in names])
        w0 = torch.cat([ref[n].detach().cpu().flatten() for n in names])
        base = float(w0.norm())
        out[group] = float((w - w0).norm()) / base if base > 0 else float("nan")
    return out


def _set_trainable(model: nn.Module, names: set[str]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)


def add_head_layers(model: nn.Module, n: int) -> None:
    """Put ``n`` new hidden layers (the encoder's width, ReLU) in front of the model's head; they
    are part of the head from then on (they train whenever the head does)."""
    if n == 0:
        return
    owner = next((name for name, m in model.named_children() if m is model.head), None)
    if owner is None:
        raise TasksimError(f"finetune.added_layers: {type(model).__name__}'s head is not one of its modules")
    setattr(model, owner, deepen_head(model.head, model.embedding_dim, n))


def use_pretrained_readout(model: nn.Module) -> None:
    """Replace the fresh head by one that starts from the backbone's own pretrained readout
    (``pretrained_readout``), for ``finetune.keep_readout``."""
    build = getattr(model, "pretrained_readout", None)
    owner = next((name for name, m in model.named_children() if m is model.head), None)
    if build is None or owner is None:
        raise TasksimError(f"finetune.keep_readout: {type(model).__name__} has no pretrained readout to keep")
    setattr(model, owner, build())


def penalty_fn(model: nn.Module, regs: list[RegularizerConfig]) -> Callable[[Tensor], Tensor] | None:
    """The summed penalty of the regularisers with a weight above 0 (L2-SP towards the encoder's
    weights as they are now, i.e. the pretrained ones), or None."""
    terms: list[Callable[[Tensor], Tensor]] = []
    for reg in regs:
        if reg.weight <= 0:
            continue
        if reg.kind == "l2sp":
            ref = reference_weights(model, [n for _, names in encoder_groups(model) for n in names])
            terms.append(lambda z, w=reg.weight, ref=ref: w * l2sp_penalty(model, ref))
        elif reg.kind == "bss":
            terms.append(lambda z, w=reg.weight, k=reg.bss_k: w * bss_penalty(z, k))
    if not terms:
        return None
    return terms[0] if len(terms) == 1 else lambda z: sum((t(z) for t in terms[1:]), terms[0](z))


def finetune_options(model: nn.Module, cfg: FinetuneConfig, pretrained: bool) -> FitOptions:
    """Freeze what the strategy freezes and build the optimiser, schedule and penalty; first, grow
    the head by ``cfg.added_layers`` (the model changes in place).

    ``pretrained=False`` is the scratch baseline: everything trains, no regulariser."""
    if pretrained:
        add_head_layers(model, cfg.added_layers)
    heads = head_names(model)
    groups = trainable_groups(model, cfg) if pretrained else encoder_groups(model)
    params = dict(model.named_parameters())
    unfreeze_every = cfg.gradual_unfreeze if pretrained else 0
    initially = set(heads) | ({n for _, names in groups for n in names} if not unfreeze_every else set())
    _set_trainable(model, initially)

    def make_optimizer(m: nn.Module) -> torch.optim.Optimizer:
        decay = cfg.llrd if (pretrained and cfg.llrd) else 1.0
        param_groups = [{"params": [params[n] for n in heads], "lr": cfg.head_lr or cfg.lr}]
        for depth, (_, names) in enumerate(reversed(groups), start=1):
            param_groups.append({"params": [params[n] for n in names], "lr": cfg.lr * decay ** depth})
        return torch.optim.Adam(param_groups)

    on_epoch: Callable[[int], None] | None = None
    if unfreeze_every:
        def on_epoch(epoch: int) -> None:
            n_open = min(epoch // unfreeze_every, len(groups))
            opened = {n for _, names in groups[len(groups) - n_open:] for n in names}
            _set_trainable(model, set(heads) | opened)

    penalty = penalty_fn(model, cfg.penalties()) if pretrained else None
    return FitOptions(cfg.max_epochs, cfg.patience, cfg.batch_size, cfg.lr, make_optimizer=make_optimizer,
                      penalty=penalty, on_epoch_start=on_epoch, warmup_epochs=cfg.warmup_epochs)


class Standardize(nn.Module):
    """A fixed affine map (x - mean) / std: fitted once, never trained (buffers, no parameters)."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@torch.no_grad()
def graph_features(model: nn.Module, inputs: list, device: torch.device, batch_size: int = 64) -> Tensor:
    """The model's graph features (``embed``) of ``inputs`` in eval mode, (n, dim) on the CPU."""
    from torch_geometric.loader import DataLoader

    model.eval()
    return torch.cat([model.embed(b.to(device)).cpu() for b in DataLoader(list(inputs), batch_size=batch_size)])


def standardise_head(model: nn.Module, train_features: Tensor) -> None:
    """Put a ``Standardize`` fitted on ``train_features`` (each feature's mean and std over the
    training crystals; std floored at 1e-6 of the largest) in front of the model's head."""
    mean, std = train_features.mean(0), train_features.std(0)
    std = torch.clamp(std, min=max(float(std.max()) * 1e-6, 1e-12))
    owner = next((name for name, m in model.named_children() if m is model.head), None)
    if owner is None:
        raise TasksimError(f"finetune.feature_norm: {type(model).__name__}'s head is not one of its modules")
    head = model.head
    device = next(head.parameters()).device
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    setattr(model, owner, nn.Sequential(Standardize(mean, std), *layers).to(device))


def _with_schedule(opts: FitOptions, build: Callable[[nn.Module], torch.optim.Optimizer],
                   min_lr: float | None) -> FitOptions:
    """``opts`` with optimiser ``build`` and, when ``min_lr`` is set, its learning rates annealed by
    cosine to ``min_lr`` over the run's epochs (stepped per epoch, as CosineAnnealingLR)."""
    return replace(opts, make_optimizer=build, schedule="none" if min_lr is None else "cosine", eta_min=min_lr or 0.0)


def scratch_options(model: nn.Module, ft: FinetuneConfig, sc: ScratchConfig) -> FitOptions:
    """The from-scratch baseline: everything trains, with the scratch section's optimiser (its unset
    fields fall back to ``ft``): Adam, or SGD with momentum; cosine to ``min_lr`` when set."""
    ft = ft.model_copy(update={k: v for k in ("lr", "max_epochs", "patience", "batch_size")
                               if (v := getattr(sc, k)) is not None})
    opts = finetune_options(model, ft, pretrained=False)
    if sc.optimizer == "adam" and sc.min_lr is None:
        return opts
    adam = opts.make_optimizer

    def build(m: nn.Module) -> torch.optim.Optimizer:
        if sc.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), ft.lr, momentum=sc.momentum)
        return adam(m)  # type: ignore[misc]

    return _with_schedule(opts, build, sc.min_lr)


def moe_options(model: MixtureOfExperts, cfg: MoEConfig, max_epochs: int, patience: int,
                batch_size: int) -> FitOptions:
    """What trains in a mixture: each expert's last layer (expert_lr) when ``train_last``, else no
    expert parameter; the gate logits and head at head_lr; cosine annealing when asked."""
    expert_params, other_params = [], []
    if model.experts is not None:
        last = [f"experts.{i}.{e.ENCODER_LAYERS[-1]}." for i, e in enumerate(model.experts)]
        for name, p in model.named_parameters():
            if name.startswith("experts."):
                p.requires_grad_(cfg.train_last and any(name.startswith(prefix) for prefix in last))
    for name, p in model.named_parameters():
        if name.startswith(("experts.", "tails.")):
            if p.requires_grad:
                expert_params.append(p)
        elif p.requires_grad:
            other_params.append(p)

    def build(_: nn.Module) -> torch.optim.Optimizer:
        groups = [{"params": other_params, "lr": cfg.head_lr}]
        return torch.optim.Adam(groups + ([{"params": expert_params, "lr": cfg.expert_lr}] if expert_params else []))

    penalty = (lambda z: cfg.penalty * model.gate_penalty()) if cfg.penalty > 0 and model.theta.requires_grad else None  # noqa: E731
    opts = FitOptions(max_epochs, patience, batch_size, penalty=penalty)
    return _with_schedule(opts, build, 0.0 if cfg.schedule == "cosine" else None)
