"""The published CGCNN checkpoints: load them, predict with them, import them as task models.

Two sets load: the 8 models published with CGCNN (txie-93/cgcnn ``pre-trained/``, MIT) and the 18
mixture-of-experts extractors (rees-c/MoE ``cgcnn/data/saved_extractors/``, MIT). A file is a dict
with ``state_dict``, ``normalizer`` (mean, std of the training target), ``args`` and bookkeeping.
Files are untrusted input: they load with ``weights_only=True``. The CGCNN semi-metal classifier
stores ``best_mae_error`` as a numpy float64, so numpy's scalar constructor and dtypes (data only,
no code) are allow-listed for that load; it imports as a 2-class classifier whose ``predict`` is
log-probabilities (its normaliser is the identity, mean 0 and std 1, as CGCNN writes it).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core.multiarray import scalar as _np_scalar
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from tasksim_ray.errors import TasksimError
from tasksim_ray.featurize.crystal import GraphSettings
from tasksim_ray.infra.cache import Artifacts
from tasksim_ray.models import TaskModelInfo, save_checkpoint
from tasksim_ray.models.cgcnn import CGCNN

SUFFIX = ".pth.tar"
_SAFE_NUMPY = [(_np_scalar, "numpy.core.multiarray.scalar"), np.dtype, np.dtypes.Float64DType]
# units of the targets whose units the papers state (Xie & Grossman 2018; Chang et al. 2022);
# moduli are log10(GPa)
UNITS = {
    "band-gap": "eV", "efermi": "eV", "final-energy-per-atom": "eV/atom", "formation-energy-per-atom": "eV/atom",
    "bulk-moduli": "log10(GPa)", "shear-moduli": "log10(GPa)", "poisson-ratio": "", "semi-metal-classification": "class",
    "bandgap": "eV", "eform": "eV/atom", "gvrh": "log10(GPa)", "mpkvrh": "log10(GPa)",
    "jarvisEg": "eV", "jarvisEform": "eV/atom",
}


@dataclass
class PublishedInfo:
    """What a published checkpoint says about itself, beyond the weights."""

    source: str  # file name
    task: str
    hparams: dict[str, Any]  # CGCNN constructor arguments
    graph: dict[str, Any]  # GraphSettings fields the model was trained with
    target_mean: float
    target_std: float
    args: dict[str, Any] = field(default_factory=dict)  # the training script's arguments
    epoch: int | None = None
    best_error: float | None = None  # best validation MAE (regression) or AUC (classification)


def task_name(path: Path) -> str:
    """Task name from a checkpoint file name: ``formation-energy-per-atom.pth.tar`` ->
    ``formation-energy-per-atom``; ``singletask_32hfl_jarvisEg_best_model.pth.tar`` -> ``jarvisEg``."""
    stem = path.name.removesuffix(SUFFIX)
    for pattern in (r"^\d{4}-\d\d-\d\d-\d\d:\d\d_", r"^singletask_", r"_best_model$", r"_sgd_weightedsampling$",
                    r"_?32h(fl|fealen)_?"):
        stem = re.sub(pattern, "", stem)
    return stem


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict, loaded as data only (``weights_only=True``)."""
    if not path.is_file():
        raise TasksimError(f"{path}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_SAFE_NUMPY):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means a file we cannot read
        raise TasksimError(f"{path}: not a loadable CGCNN checkpoint ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0]})") from exc
    missing = [k for k in ("state_dict", "normalizer") if k not in ckpt]
    if missing:
        raise TasksimError(f"{path}: checkpoint lacks {missing}; keys: {sorted(ckpt)}")
    return ckpt


def hparams_from_state(state: dict[str, Tensor], args: dict[str, Any], where: str) -> dict[str, Any]:
    """CGCNN constructor arguments from the state-dict shapes, checked against the saved ``args``."""
    try:
        atom_fea_len, orig_atom_fea_len = state["embedding.weight"].shape
        n_conv = sum(1 for k in state if re.fullmatch(r"convs\.\d+\.fc_full\.weight", k))
        nbr_fea_len = state["convs.0.fc_full.weight"].shape[1] - 2 * atom_fea_len
        h_fea_len = state["conv_to_fc.weight"].shape[0]
        n_out = state["fc_out.weight"].shape[0]
    except KeyError as exc:
        raise TasksimError(f"{where}: state_dict lacks {exc.args[0]}; not a CGCNN checkpoint") from exc
    n_h = 1 + sum(1 for k in state if re.fullmatch(r"fcs\.\d+\.weight", k))
    classification = args.get("task") == "classification"
    hp = {"orig_atom_fea_len": int(orig_atom_fea_len), "nbr_fea_len": int(nbr_fea_len),
          "atom_fea_len": int(atom_fea_len), "n_conv": n_conv, "h_fea_len": int(h_fea_len), "n_h": n_h,
          "classification": classification, "n_tasks": 1 if classification else int(n_out)}
    clash = {k: (args[k], hp[k]) for k in ("atom_fea_len", "h_fea_len", "n_conv", "n_h") if k in args and args[k] != hp[k]}
    if clash:
        raise TasksimError(f"{where}: args disagree with the state dict (args, weights): {clash}")
    return hp


def checkpoint_graph_settings(folder: Path) -> dict[str, Any]:
    """Graph settings from ``hyperparameters.json`` beside the file, else CGCNN's defaults."""
    hp_file = folder / "hyperparameters.json"
    settings = asdict(GraphSettings())
    if hp_file.is_file():
        ds = json.loads(hp_file.read_text()).get("dataset_kwargs", {})
        names = {"radius": "radius", "max_num_nbr": "max_neighbors", "dmin": "dmin", "step": "step"}
        settings |= {ours: type(settings[ours])(ds[theirs]) for theirs, ours in names.items() if theirs in ds}
    return settings


def load_published(path: str | Path) -> tuple[CGCNN, float, float, PublishedInfo]:
    """(model in eval mode, normaliser mean, normaliser std, info) of one published checkpoint."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    args = dict(ckpt.get("args") or {})
    hp = hparams_from_state(ckpt["state_dict"], args, str(path))
    graph = checkpoint_graph_settings(path.parent)
    if len(GraphSettings(**graph).centres) != hp["nbr_fea_len"]:
        raise TasksimError(f"{path}: {hp['nbr_fea_len']} bond features in the weights but the graph settings "
                           f"{graph} give {len(GraphSettings(**graph).centres)}")
    model = CGCNN(**hp)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:  # keys beyond those the shapes were read from: another architecture
        raise TasksimError(f"{path}: state dict does not fit CGCNN({hp}): {str(exc).splitlines()[1].strip()}") from exc
    norm = ckpt["normalizer"]
    mean, std = float(norm["mean"]), float(norm["std"])
    best = ckpt.get("best_mae_error")
    info = PublishedInfo(path.name, task_name(path), hp, graph, mean, std, args,
                         int(ckpt["epoch"]) if "epoch" in ckpt else None, float(best) if best is not None else None)
    return model.eval(), mean, std, info


@torch.no_grad()
def predict(model: CGCNN, batch: Batch, mean: float, std: float) -> Tensor:
    """Predictions in target units, pred * std + mean (log-probabilities for a classifier)."""
    out = model(batch)
    return out if model.classification else out * std + mean


@torch.no_grad()
def extractor_features(model: CGCNN, graphs: list[Data], batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """(atom features entering the last convolution, (n_atoms, d); softplus of the mean-pooled atom
    features after it, (n_graphs, d), i.e. ``model.embed``), in eval mode, in this process: what a
    frozen extractor gives a mixture of experts (the published code left its batch-norm in train
    mode). Studies get the same from the model hosts; benchmarks call this."""
    model.eval()
    atoms, pooled = [], []
    for b in DataLoader(graphs, batch_size=batch_size):
        atoms.append(model.embed_nodes(b, "last_input"))
        pooled.append(model.embed(b))
    return torch.cat(atoms), torch.cat(pooled)


def write_published(path: Path, final: Path) -> Path:
    """One published checkpoint as a model folder ``final`` (the ``load_checkpoint`` format, backbone
    ``cgcnn``), written atomically with a manifest."""
    model, mean, std, info = load_published(path)
    metrics = {"source": info.source, "epoch": info.epoch, "best_error": info.best_error,
               "graph": info.graph, "train_args": info.args}
    with Artifacts(final.parent, "published-model").build(final.name, source=str(path)) as tmp:
        save_checkpoint(tmp, model, TaskModelInfo("cgcnn", info.hparams, info.task, UNITS.get(info.task, ""),
                                                  mean, std, metrics))
    return final


def import_published(src_dir: str | Path, out_root: str | Path) -> dict[str, Path]:
    """Convert every ``*.pth.tar`` in ``src_dir`` into a model folder ``out_root/<task>`` (the
    ``load_checkpoint`` format, backbone ``cgcnn``), each written atomically with a manifest."""
    src_dir, out_root = Path(src_dir), Path(out_root)
    files = sorted(src_dir.glob(f"*{SUFFIX}"))
    if not files:
        raise TasksimError(f"{src_dir}: no *{SUFFIX} checkpoint files")
    names = [task_name(f) for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TasksimError(f"{src_dir}: several files map to task name(s) {dupes}")
    written: dict[str, Path] = {}
    for path in files:
        written[task_name(path)] = write_published(path, out_root / task_name(path))
    return written
