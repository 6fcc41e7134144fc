"""The pre-train/fine-tune study (``tasksim ptft``): pairwise transfer against multi-property pretraining
(MPT), after Devi, Butler & Sai Gautam.

Per target: scratch; fine-tuning from other tasks' models (every other in-distribution task, or the
pairs ``transfer.ptft.pairs`` names: the pairwise PT-FT gain matrix); and fine-tuning from one model
pretrained on all other in-distribution tasks at once (MPT: budgeted multi-task pretraining with a
masked loss, the first split of ``transfer.budget``; ``ptft.mpt_added_layers`` hidden layers go
before its fresh head, as the paper's MPT fine-tuning adds two). Every recipe runs at every
``transfer.sizes`` (the fine-tuning-size sweep) on ``transfer.folds`` random samplings of the training
split. Targets in ``transfer.ood`` are never a source: they are the out-of-distribution check,
fine-tuned from every in-distribution task and from MPT over all of them, except the tasks sharing a
``transfer.task_groups`` group with them (the same database, the same dimensionality). The
pretraining-size sweep pretrains each ``ptft.pt_sources`` task alone on ``ptft.pt_sizes`` crystals and
fine-tunes at the largest size. Gains are reported on the learning-curve AUC and at the largest size
(the published study's fixed fine-tuning size), paired by fold.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tasksim_ray.data.sizes import report_shortfall
from tasksim_ray.data.transforms import LabelTransform
from tasksim_ray.errors import TasksimError
from tasksim_ray.papers.verdict import RULE, paired, tally
from tasksim_ray.infra.cache import read_manifest, stable_hash
from tasksim_ray.training.multitask import all_labels_run, subset_model, submit_subsets
from tasksim_ray.training.subsets import SubsetData, TaskPool, combine_pools
from tasksim_ray.transfer import plots
from tasksim_ray.transfer.analysis import fold_gains, mean_se, paired_difference
from tasksim_ray.transfer.cells import Recipe
from tasksim_ray.transfer.data import TransferData
from tasksim_ray.transfer.report import curve_figures
from tasksim_ray.transfer.study import SCRATCH, Context, Curves, Done, Job, Section, Study, curve_entry, curve_jobs

MPT = "MPT"


def size_gain(curves: Curves, target: str, label: str, size: int, folds: int) -> np.ndarray:
    """Per-fold relative test-MAE improvement over scratch (%) at one training size."""
    def mae(lbl: str) -> np.ndarray:
        by_fold = {c["fold"]: c["test_mae"] for c in curves[(target, lbl)]["cells"] if c["size"] == size}
        return np.array([by_fold[f] for f in range(folds)], dtype=float)

    base = mae("scratch")
    return 100 * (base - mae(label)) / base


def sized_subset(data: TransferData, task: str, n: int) -> SubsetData:
    """``task``'s pretraining data cut to the first ``n`` crystals of its pool (a random sample of its
    training split), validated as its per-task model is."""
    p = data.pool(task)
    report_shortfall("transfer.ptft.pt_sizes", n, {task: len(p.rows)},
                     "pretraining crystals (transfer.budget.pool_per_task caps the pool)", defines_result=True)
    cut = TaskPool(task, p.rows[:n], p.pos[:n], p.y[:n], p.val_rows, p.val_pos, p.val_y)
    return combine_pools(stable_hash(data.table.fingerprint(task, cut.rows, cut.val_rows)), [cut])


def sweep_label(source: str, n: int) -> str:
    return f"{source} (PT {n})"


class PTFTStudy(Study):
    def plan(self, ctx: Context) -> list[Job]:
        tc, p = ctx.run.cfg.transfer, ctx.run.cfg.transfer.ptft
        everything = ctx.data.targets
        missing = [t for t in tc.ood if t not in everything]
        if missing:
            raise TasksimError(f"transfer.ood: {missing} are not among the study's targets {everything}")
        self.in_dist = sources = [t for t in everything if t not in tc.ood]
        if len(sources) < 2:
            raise TasksimError(f"the ptft study needs at least 2 in-distribution tasks, got {sources}")
        named = [t for pair in (p.pairs or []) for t in pair] + p.pt_sources
        if stray := sorted({t for t in named if t not in everything}):
            raise TasksimError(f"transfer.ptft: {stray} are not among the study's tasks {everything}")
        if bad := sorted(({s for _, s in p.pairs or []} | set(p.pt_sources)) & set(tc.ood)):
            raise TasksimError(f"transfer.ptft: out-of-distribution task(s) {bad} cannot be a source")
        paired = {t for t, _ in p.pairs or []}
        self.targets = targets = [t for t in everything if p.pairs is None or t in paired or t in tc.ood]
        # MPT pretrains on every in-distribution task but the target (for an OOD target: none sharing a group)
        self.mpt_sources = {t: [s for s in sources if s != t and not (t in tc.ood and tc.shared_groups(t, s))]
                            for t in targets}
        self.mine = mine = {t: [s for a, s in p.pairs or [] if a == t] if t in paired else self.mpt_sources[t]
                            for t in targets}
        dirs = self._mpt_pretrain(ctx, targets)
        head = tc.finetune.model_copy(update={"added_layers": p.mpt_added_layers}) if p.mpt_added_layers else None
        mpt = {t: Recipe("finetune", self.label, (str(d),), finetune=head) for t, d in zip(targets, dirs)}
        jobs = [j for t in targets for j in curve_jobs(ctx, t, [SCRATCH, *[ctx.from_task(s) for s in mine[t]], mpt[t]])]
        return jobs + self._pt_size_jobs(ctx)

    def _mpt_pretrain(self, ctx: Context, targets: list[str]) -> list[Path]:
        """Start each target's MPT: on the union of its sources' pools, every label once per epoch for
        ``ptft.mpt_epochs`` epochs (the paper's premise: MPT sees more data than any one source), or under
        the budget's first split; with ``ptft.mpt_loss`` and ``ptft.mpt_batch_size``."""
        tc, p = ctx.run.cfg.transfer, ctx.run.cfg.transfer.ptft
        assert isinstance(ctx.data, TransferData)
        batch = p.mpt_batch_size or tc.budget.batch_size
        budget = tc.budget.model_copy(update={"loss": p.mpt_loss, "batch_size": batch})
        subsets = {t: ctx.data.subset(self.mpt_sources[t]) for t in targets}
        if p.mpt_epochs:
            runs = {t: all_labels_run(subsets[t], budget, p.mpt_epochs) for t in targets}
            self.split = (0, p.mpt_epochs)  # N differs per target: all of its sources' pool labels
            self.label = f"{MPT} all x{p.mpt_epochs}"
        else:
            runs = {t: (budget, tc.budget.resolved()[0]) for t in targets}
            self.split = tc.budget.resolved()[0]
            self.label = f"{MPT} {self.split[0]}x{self.split[1]}"
        dirs: list[Path] = []
        cfg = ctx.run.cfg
        for t in targets:  # each target's budget may differ (its own sampling), so one submission each
            b, split = runs[t]
            got, pending = submit_subsets(ctx.store_ref, [(subsets[t], split)], cfg.model, b, cfg.seed,
                                          ctx.run.artifacts / "subset-models", tc.num_cpus, tc.num_gpus)
            ctx.pending |= pending
            dirs += got
        self.mpt_dirs = dict(zip(targets, dirs))
        return dirs

    def _pt_size_jobs(self, ctx: Context) -> list[Job]:
        """Each swept source pretrained alone on each size, fine-tuned at the largest fine-tuning size
        on every target it is a pairwise source of (single points, so they carry no curve size)."""
        tc, p = ctx.run.cfg.transfer, ctx.run.cfg.transfer.ptft
        assert isinstance(ctx.data, TransferData)
        runs = [(s, n) for s in p.pt_sources for n in p.pt_sizes]
        self.sweep = {sweep_label(s, n): (s, n) for s, n in runs}
        if not runs:
            return []
        cfg = ctx.run.cfg
        subsets = [(sized_subset(ctx.data, s, n), (n, p.pt_epochs)) for s, n in runs]
        dirs, pending = submit_subsets(ctx.store_ref, subsets, cfg.model, tc.budget, cfg.seed,
                                       ctx.run.artifacts / "subset-models", tc.num_cpus, tc.num_gpus)
        ctx.pending |= pending
        return [(replace(ctx.data.cell(t, f, tc.sizes[-1]), size=None),
                 Recipe("finetune", sweep_label(s, n), (str(d),)))
                for (s, n), d in zip(runs, dirs) for t in self.targets if s in self.mine[t] for f in range(tc.folds)]

    def summarise(self, ctx: Context, done: Done) -> dict[str, Any]:
        tc, targets, sources, mine, label, curves = (ctx.run.cfg.transfer, self.targets, self.in_dist, self.mine,
                                                     self.label, done.curves)
        largest, folds = tc.sizes[-1], tc.folds
        auc_gain = np.full((len(targets), len(sources)), np.nan)
        fixed_gain = np.full_like(auc_gain, np.nan)
        per_target: dict[str, Any] = {}
        for i, t in enumerate(targets):
            base = curves[(t, "scratch")]["fold_auc"]
            auc_g = {s: 100 * fold_gains(base, curves[(t, s)]["fold_auc"]) for s in [*mine[t], label]}
            fix_g = {s: size_gain(curves, t, s, largest, folds) for s in [*mine[t], label]}
            for s in mine[t]:
                auc_gain[i, sources.index(s)] = auc_g[s].mean()
                fixed_gain[i, sources.index(s)] = fix_g[s].mean()
            best = max(mine[t], key=lambda s: float(fix_g[s].mean()))
            per_target[t] = {
                "ood": t in tc.ood, "curves": {r: curve_entry(curves, t, r) for r in ["scratch", *mine[t], label]},
                "mpt_sources": self.mpt_sources[t], "excluded_by_group": sorted(set(sources) - {t}
                                                                                - set(self.mpt_sources[t])),
                "per_size": {r: _per_size(curves, t, r, tc.sizes) for r in ["scratch", *mine[t], label]},
                "best_pairwise": best, "best_pairwise_gain": mean_se(fix_g[best]),
                "mpt_gain": mean_se(fix_g[label]), "mpt_auc_gain": mean_se(auc_g[label]),
                "mpt_vs_best_pairwise": paired_difference(fix_g[label], fix_g[best]),
                "mpt_beats_best_pairwise": bool(fix_g[label].mean() > fix_g[best].mean()),
                "mpt_beats_every_pairwise": bool(all(fix_g[label].mean() > fix_g[s].mean() for s in mine[t])),
                "pairs_beating_scratch": int(sum(fix_g[s].mean() > 0 for s in mine[t])), "pairs": len(mine[t]),
                "fold_gain": {s: g.tolist() for s, g in fix_g.items()}, "data_volume": self._volume(ctx, t)}
        ind = [e for e in per_target.values() if not e["ood"]]
        return {"targets": targets, "sources": sources, "ood": list(tc.ood), "split": list(self.split), "mpt": label,
                "mpt_added_layers": tc.ptft.mpt_added_layers, "task_groups": dict(tc.task_groups),
                "size": largest, "sizes": list(tc.sizes), "folds": folds, "auc_gain": auc_gain.tolist(),
                "label_std": {t: float(np.nanstd(ctx.data.table.labels(t))) for t in targets},
                "paper_transform": {t: _paper_transform(ctx, t).to_dict() for t in targets},
                "mpt_loss": tc.ptft.mpt_loss, "mpt_epochs": tc.ptft.mpt_epochs,
                "mpt_batch_size": tc.ptft.mpt_batch_size or tc.budget.batch_size,
                "finetune_batch_size": tc.finetune.batch_size,
                "fixed_gain": fixed_gain.tolist(), "per_target": per_target,
                "pt_size_sweep": self._sweep_summary(done, curves, largest, folds),
                "pairs_beating_scratch": sum(e["pairs_beating_scratch"] for e in per_target.values()),
                "pairs": sum(e["pairs"] for e in per_target.values()),
                "mpt_beats_best_pairwise": sum(e["mpt_beats_best_pairwise"] for e in ind),
                "in_distribution_targets": len(ind)}

    def _volume(self, ctx: Context, target: str) -> dict[str, dict[str, int]]:
        """Labelled structures and sample-visits (labels x epochs trained) of the target's MPT and of each of
        its pairwise sources' per-task models: the paper's premise is that MPT sees the most."""
        m = subset_model(self.mpt_dirs[target]).metrics
        out = {self.label: {"labels": int(m["labels_available"]), "samples_seen": int(m["samples_seen"])}}
        for s in self.mine[target]:
            r = read_manifest(Path(ctx.model_dirs[s])).get("metrics", {})
            n = int(r.get("n_train", 0))
            out[s] = {"labels": n, "samples_seen": n * int(r.get("epochs_run", 0))}
        return out

    def _sweep_summary(self, done: Done, curves: Curves, largest: int, folds: int) -> list[dict[str, Any]]:
        """Per (source, target): the gain over scratch at the largest fine-tuning size (%, per fold and
        mean ± SE) for each pretraining size, and for the source's per-task model (its whole pool)."""
        out = []
        for source in dict.fromkeys(s for s, _ in self.sweep.values()):
            for t in [t for t in self.targets if source in self.mine[t]]:
                base = {c["fold"]: c["test_mae"] for c in curves[(t, "scratch")]["cells"] if c["size"] == largest}
                arms = {}
                for lbl, (s, n) in self.sweep.items():
                    if s == source:
                        mae = {c["fold"]: c["test_mae"] for c in done.cells if c["target"] == t and c["recipe"] == lbl}
                        arms[str(n)] = [100 * (base[f] - mae[f]) / base[f] for f in range(folds)]
                arms["per-task model"] = size_gain(curves, t, source, largest, folds).tolist()
                gains = {n: {"values": g, "mean": mean_se(g)[0], "se": mean_se(g)[1]} for n, g in arms.items()}
                out.append({"source": source, "target": t, "gain": gains})
        return out

    def render(self, out: Path, result: dict[str, Any], ctx: Context) -> Section:
        figures: dict[str, Path] = {}
        md = ptft_markdown(out, result, figures) + verdict_lines(result) + sweeps_markdown(result)
        shown = {t: {k: e["curves"][k] for k in ("scratch", e["best_pairwise"], result["mpt"])}
                 for t, e in result["per_target"].items()}
        figures |= curve_figures(out, "ptft", shown, ctx.data.units)
        return Section(md, figures)

    def paper_rows(self, result: dict[str, Any]) -> dict[str, Any]:
        """Test MAE (mean, std, folds) per target and recipe at the largest fine-tuning size, under
        the target's name, and at every size under ``<target>@<size>``; MPT is ``mpt``, a pairwise
        source its task name (``transfer.paper_tables``' ``methods`` maps the paper's columns). The
        same divided by the target's label std, ``<target>@<size>/std``: the paper's MAEs are on
        standardised labels, so a table in those units is aliased to these rows."""
        rows: dict[str, Any] = {}
        for t, e in result["per_target"].items():
            scale = result["label_std"][t]
            for size in result["sizes"]:
                rows[f"{t}@{size}"] = {("mpt" if r == result["mpt"] else r): x[str(size)]
                                       for r, x in e["per_size"].items()}
                rows[f"{t}@{size}/std"] = {r: x | {"mean": x["mean"] / scale, "std": x["std"] / scale}
                                           | ({"values": [v / scale for v in x["values"]]} if "values" in x else {})
                                           for r, x in rows[f"{t}@{size}"].items()}
                fitted = result.get("paper_transform", {}).get(t)
                if fitted:  # the paper's units (paper 004: standardised, then min-max; fitted on the training split)
                    k = LabelTransform.from_dict(fitted).mae_scale()
                    rows[f"{t}@{size}/paper"] = {r: x | {"mean": x["mean"] * k, "std": x["std"] * k}
                                                 | ({"values": [v * k for v in x["values"]]} if "values" in x else {})
                                                 for r, x in rows[f"{t}@{size}"].items()}
            rows[t] = rows[f"{t}@{result['size']}"]
        return rows


def _paper_transform(ctx: Context, task: str) -> LabelTransform:
    """``ptft.paper_transform`` fitted on the task's pretraining pool (training-split rows only)."""
    assert isinstance(ctx.data, TransferData)
    y = ctx.data.table.labels(task)[ctx.data.rows[task]["pool"]]
    return LabelTransform.fit(ctx.run.cfg.transfer.ptft.paper_transform, y, "transfer.ptft.paper_transform")


def _per_size(curves: Curves, target: str, label: str, sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Test MAE per fine-tuning size: mean, std (numpy's) and number of folds."""
    out = {}
    for n in sizes:
        cells = sorted((c for c in curves[(target, label)]["cells"] if c["size"] == n), key=lambda c: c["fold"])
        v = np.array([c["test_mae"] for c in cells])
        out[str(n)] = {"mean": float(v.mean()), "std": float(v.std()), "seeds": int(v.size), "values": v.tolist()}
    return out


def ptft_markdown(out: Path, r: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    """The pairwise gain matrix (figure and table), MPT against the best pairwise source and scratch."""
    def gain(g: list[float]) -> str:  # one fold has no spread to report
        return f"{g[0]:.1f}" if r["folds"] == 1 else f"{g[0]:.1f} ± {g[1]:.1f}"

    n, e = r["split"]
    volume = (f"every label of the union of its sources' pools x {e} epochs" if r.get("mpt_epochs")
              else f"budget {n} samples x {e} epochs")
    loss = f"masked {'L1' if r.get('mpt_loss') == 'l1' else 'MSE'} loss, batch {r.get('mpt_batch_size', '?')}"
    paths["ptft_gain"] = out / "ptft_gain_matrix.png"
    plots.plot_gain_heatmap(paths["ptft_gain"], r["sources"], np.array(r["fixed_gain"]) / 100,
                            f"PT-FT gain (%) at {r['size']} training points", targets=r["targets"],
                            label=f"test-MAE gain over scratch at n = {r['size']} (%)")
    added = r["mpt_added_layers"]
    head = f", fine-tuned with {added} added hidden layers before its head" if added else ""
    groups = "; ".join(f"{g}: {', '.join(m)}" for g, m in r["task_groups"].items())
    md = ["## Pre-train / fine-tune: pairwise sources and multi-property pretraining", "",
          f"Gain: relative test-MAE improvement over scratch at {r['size']} fine-tuning points (%), mean over "
          f"{r['folds']} fold(s) (random samplings of the training split). MPT: one model pretrained on all other "
          f"in-distribution tasks at once, {volume}, {loss}{head}; fine-tuning batch "
          f"{r.get('finetune_batch_size', '?')}. Out-of-distribution "
          f"targets (never a source): {', '.join(r['ood']) or 'none'}" + (f"; task groups ({groups}): an OOD target "
                                                                           "takes no source sharing a group with it"
                                                                           if groups else "") + ".",
          "", "| target \\ source | " + " | ".join(r["sources"]) + " |", "|---" * (len(r["sources"]) + 1) + "|"]
    md += [f"| {t} | " + " | ".join("-" if v is None or np.isnan(v) else f"{v:.1f}" for v in row) + " |"
           for t, row in zip(r["targets"], r["fixed_gain"])]
    md += ["", f"Pairwise PT-FT beats scratch on {r['pairs_beating_scratch']} of {r['pairs']} pairs.", "",
           "| target | best pairwise (gain) | MPT gain | MPT - best pairwise [95%] | beyond? | MPT beats every pair? |",
           "|---|---|---|---|---|---|"]
    for t, x in r["per_target"].items():
        d = x["mpt_vs_best_pairwise"]
        diff = (f"{d['mean']:.1f} (1 fold)" if r["folds"] == 1
                else f"{d['mean']:.1f} [{d['ci'][0]:.1f}, {d['ci'][1]:.1f}]")
        md.append(f"| {t}{' (OOD)' if x['ood'] else ''} | {x['best_pairwise']} ({gain(x['best_pairwise_gain'])}) | "
                  f"{gain(x['mpt_gain'])} | {diff} | {'yes' if d['differ'] else 'no'} | "
                  f"{'yes' if x['mpt_beats_every_pairwise'] else 'no'} |")
    if r["in_distribution_targets"]:
        md += ["", f"MPT beats the best pairwise source on {r['mpt_beats_best_pairwise']} of "
                   f"{r['in_distribution_targets']} in-distribution targets."]
    md += volume_lines(r)
    if r.get("paper_transform"):
        names = " then ".join(LabelTransform.from_dict(next(iter(r["paper_transform"].values()))).names)
        md += ["", f"Beside paper 004's tables, MAEs are in its units: the labels' {names} (its section 2), fitted on "
                   "each target's training split, so an MAE is multiplied by (rows `<target>@<size>/paper`): "
               + ", ".join(f"{t} {LabelTransform.from_dict(v).mae_scale():.4g}"
                           for t, v in r["paper_transform"].items())
               + "."]
    for t, x in r["per_target"].items():
        if x["ood"]:
            md.append(f"MPT for {t} pretrained on: {', '.join(x['mpt_sources'])}"
                      + (f" (left out by task group: {', '.join(x['excluded_by_group'])})" if x["excluded_by_group"]
                         else "") + ".")
    return [*md, ""]


def verdict_lines(r: dict[str, Any]) -> list[str]:
    """Paper 004's claims on our folds, by the verdict rule: each named pair's PT-FT beats scratch (its Fig. 4),
    MPT beats scratch and MPT beats the best pairwise source (Fig. 6c in distribution, Table 1 on the OOD
    target); gains at the largest fine-tuning size, paired by fold."""
    if not any("fold_gain" in x for x in r["per_target"].values()):
        return []
    mpt, found = r["mpt"], []
    for t, x in r["per_target"].items():
        g = {k: np.array(v) for k, v in x["fold_gain"].items()}
        tag = " (OOD)" if x["ood"] else ""
        found += [paired(f"{t}{tag}: MPT beats scratch", g[mpt]),
                  paired(f"{t}{tag}: MPT beats the best pairwise source ({x['best_pairwise']}, chosen on these folds)",
                         g[mpt] - g[x["best_pairwise"]])]
        if not x["ood"]:
            found += [paired(f"{t}: PT-FT from {s} beats scratch", g[s]) for s in g if s != mpt]
    return ["## Verdicts against paper 004", "", RULE + " Differences: test-MAE gain over scratch at "
            f"{r['size']} fine-tuning points (%), per fold.", "", f"Verdicts: {tally(found)}.", "",
            *[f"- {v.line()}" for v in found], ""]


def volume_lines(r: dict[str, Any]) -> list[str]:
    """How much data MPT saw against each pairwise source, per target (labelled structures; sample-visits)."""
    if not any("data_volume" in x for x in r["per_target"].values()):
        return []
    md = ["", "Data seen in pretraining: labelled structures (sample-visits = labels x epochs trained).", "",
          "| target | MPT | " + " | ".join(r["sources"]) + " |", "|---" * (len(r["sources"]) + 2) + "|"]
    for t, x in r["per_target"].items():
        v = x["data_volume"]
        cell = {k: f"{e['labels']:,} ({e['samples_seen']:,})" for k, e in v.items()}
        md.append(f"| {t} | {cell[r['mpt']]} | " + " | ".join(cell.get(s, "-") for s in r["sources"]) + " |")
    return md


def sweeps_markdown(r: dict[str, Any]) -> list[str]:
    """The fine-tuning-size sweep (test MAE per size and recipe, the paper's Fig. 4) and the
    pretraining-size sweep (gain at the largest size per pretraining size, its Fig. 5a, b)."""
    sizes = [str(n) for n in r["sizes"]]
    md = ["## Fine-tuning size sweep", "",
          f"Test MAE (task units) per fine-tuning size, mean ± std over {r['folds']} fold(s); % = change against "
          "scratch at that size (positive: lower MAE).", "",
          "| target | recipe | " + " | ".join(sizes) + " |", "|---|---" + "|---" * len(sizes) + "|"]
    for t, x in r["per_target"].items():
        base = x["per_size"]["scratch"]
        for rec, per in x["per_size"].items():
            cells = [f"{per[n]['mean']:.4g} ± {per[n]['std']:.2g}" + ("" if rec == "scratch" else
                     f" ({100 * (base[n]['mean'] - per[n]['mean']) / base[n]['mean']:+.1f}%)") for n in sizes]
            md.append(f"| {t} | {rec} | " + " | ".join(cells) + " |")
    if r["pt_size_sweep"]:
        arms = list(r["pt_size_sweep"][0]["gain"])
        md += ["", "## Pretraining size sweep", "",
               f"Gain over scratch at {r['size']} fine-tuning points (%), mean ± SE over folds, per number of "
               "crystals the source was pretrained on alone (`per-task model`: the pipeline's model of the source, "
               "its whole training split, trained to early stopping).", "",
               "| source -> target | " + " | ".join(f"PT {a}" if a[0].isdigit() else a for a in arms) + " |",
               "|---" * (len(arms) + 1) + "|"]
        for s in r["pt_size_sweep"]:
            md.append(f"| {s['source']} -> {s['target']} | "
                      + " | ".join(f"{g['mean']:.1f} ± {g['se']:.1f}" for g in s["gain"].values()) + " |")
    return [*md, ""]
