"""Spearman RSA matrix benchmark: the Ray ``RSAEngine`` vs rsatoolbox vs a per-pair scipy loop.

All three compute the same T x T matrix: RDM_k = 1 - Pearson correlation between the M probe
embeddings of task k (upper triangle, M(M-1)/2 entries), RSA(a, b) = Spearman(RDM_a, RDM_b).
Synthetic float64 embeddings with structure: M x r latent probe factors shared by all tasks; each of
``--groups`` latent task groups weights the factors its own way, each task perturbs the weights
(random strength), maps them to d dimensions with its own random map, tanh, plus Gaussian noise
of random strength, so RSA is high within a group and lower across groups.

Measured in one run, each method in turn (wall clock, ``time.perf_counter``):

* rsatoolbox: ``Dataset`` per task, ``calc_rdm(datasets, method="correlation")``,
  ``compare(rdms, rdms, method="spearman")``;
* scipy: numpy RDM triangle once per task (timed), then ``scipy.stats.spearmanr`` per pair a < b;
  when the loop projected from the pairs done passes ``--scipy-budget`` seconds it stops after
  ``--scipy-pairs`` pairs (random pairs, seeded) and extrapolates linearly to T(T-1)/2 pairs;
* engine: ``RSAEngine`` in a fresh temporary cache dir, ``ensure_vectors`` + ``matrix``, on a local
  ``ray.init(address="local", num_cpus=2)`` started beforehand (its time reported apart, excluded);
  then the engine alone at ``--large-m`` probes and ``--large-t`` tasks.

rsatoolbox and scipy run before Ray starts, so their process trees hold no idle Ray processes.
Peak memory (``MEMORY_METHOD``): the summed RSS (and PSS) of this process and all its descendants
(with a local Ray: GCS, raylet, workers), sampled by a background thread; peak and baseline at
method start are reported. The maximum absolute difference of rsatoolbox's and scipy's
matrices (scipy: the pairs computed) from the engine's must be < 1e-9 (issue 32: exact).

Targets (2-core machine, T=20, M=5000; issue 32): engine >= 20x faster than rsatoolbox, or within
1.25x of the ranking floor measured in the same run (``np.sort`` of one task's float64 triangle, in
place, times T over 2 CPUs), and >= 50x faster than the scipy loop; engine at M=20,000 under 8 GB
peak (summed RSS of the process tree). ``profile``: where ensure_vectors' time went (RDM, ranks,
norm, file writing per job, summed; the rest is Ray scheduling, transfer and manifests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import ray
from scipy.stats import spearmanr

try:  # the peer is an optional extra (`bench`); without it the engine and the scipy loop still run
    import rsatoolbox
    PEER_MISSING = ""
except ImportError as exc:
    PEER_MISSING = f"rsatoolbox not installed ({exc}); its column is skipped"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasksim_ray.infra.cache import read_manifest  # noqa: E402
from tasksim_ray.similarity.engine import RSAEngine  # noqa: E402
from tasksim_ray.similarity.rsa import rdm_upper  # noqa: E402

GB = 1e9
AGREE_TOL = 1e-9
SPEEDUP_TARGETS = {"rsatoolbox": 20.0, "scipy": 50.0}
FLOOR_TARGET = 1.25  # or the engine within this factor of the ranking floor (instead of 20x rsatoolbox)
LARGE_PEAK_TARGET_GB = 8.0
MEMORY_METHOD = ("peak over the method of the summed memory of this process and all its descendants (with a "
                 "local Ray: GCS, raylet, workers), sampled by a background thread: RSS from /proc/<pid>/statm "
                 "every 50 ms, PSS from /proc/<pid>/smaps_rollup every 0.5 s. Summed RSS counts shared pages "
                 "(libraries, plasma objects, mmapped vector files) once per process, an upper bound; PSS "
                 "splits them. baseline_*: the same sum at method start. Page cache of written files excluded.")


def make_embeddings(t: int, m: int, d: int, groups: int, rank: int, seed: int) -> dict[str, np.ndarray]:
    """T tasks (keys task00, task01, ...) in ``groups`` latent groups; see the module docstring."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((m, rank))
    group_weights = rng.exponential(1.0, (groups, rank))
    embs = {}
    for k in range(t):
        own, noise = rng.uniform(0.1, 1.0), rng.uniform(0.2, 1.5)
        weights = group_weights[k % groups] * np.exp(own * rng.standard_normal(rank))
        mapping = rng.standard_normal((rank, d)) / np.sqrt(rank)
        embs[f"task{k:02d}"] = np.tanh((factors * weights) @ mapping) + noise * rng.standard_normal((m, d))
    return embs


def _pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


class TreeMemory:
    """Peak summed RSS / PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05, pss_every: int = 10) -> None:
        self.root = psutil.Process()
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = self.base_rss = self.base_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self, with_pss: bool) -> None:
        rss = pss = 0
        for p in [self.root, *self.root.children(recursive=True)]:
            try:
                rss += p.memory_info().rss
                pss += _pss_bytes(p.pid) if with_pss else 0
            except (psutil.Error, OSError):  # exited between listing and reading
                pass
        self.peak_rss = max(self.peak_rss, rss)
        if with_pss:
            self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            self._sample(n % self.pss_every == 0)

    def __enter__(self) -> TreeMemory:
        self._sample(True)
        self.base_rss, self.base_pss = self.peak_rss, self.peak_pss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(True)

    def report(self) -> dict[str, float]:
        return {"peak_rss_gb": self.peak_rss / GB, "peak_pss_gb": self.peak_pss / GB,
                "baseline_rss_gb": self.base_rss / GB, "baseline_pss_gb": self.base_pss / GB}


def run_rsatoolbox(embs: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        datasets = [rsatoolbox.data.Dataset(e) for e in embs.values()]
        rdms = rsatoolbox.rdm.calc_rdm(datasets, method="correlation")
        t1 = time.perf_counter()
        sim = rsatoolbox.rdm.compare(rdms, rdms, method="spearman")
        t2 = time.perf_counter()
        del datasets, rdms
    return {"seconds": t2 - t0, "calc_rdm_s": t1 - t0, "compare_s": t2 - t1, **mem.report()}, sim


def numpy_upper(emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    z = emb - emb.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    return (1.0 - z @ z.T)[mask]


def run_scipy(embs: dict[str, np.ndarray], budget_s: float, min_pairs: int,
              seed: int) -> tuple[dict[str, Any], np.ndarray]:
    """Per-pair spearmanr; the matrix has NaN where a pair was not computed."""
    t = len(embs)
    pairs = [(a, b) for a in range(t) for b in range(a + 1, t)]
    order = [pairs[i] for i in np.random.default_rng(seed).permutation(len(pairs))]
    sim = np.full((t, t), np.nan)
    np.fill_diagonal(sim, 1.0)
    with TreeMemory() as mem:
        t0 = time.perf_counter()
        m = next(iter(embs.values())).shape[0]
        mask = np.triu(np.ones((m, m), dtype=bool), k=1)
        uppers = [numpy_upper(e, mask) for e in embs.values()]
        t1 = time.perf_counter()
        for n, (a, b) in enumerate(order, start=1):
            sim[a, b] = sim[b, a] = spearmanr(uppers[a], uppers[b]).statistic
            if n >= min_pairs and (time.perf_counter() - t1) / n * len(pairs) > budget_s:
                break
        t2 = time.perf_counter()
        del uppers, mask
    per_pair = (t2 - t1) / n
    return {"seconds": (t1 - t0) + per_pair * len(pairs), "rdm_s": t1 - t0, "pairs_timed": n,
            "pairs_total": len(pairs), "seconds_per_pair": per_pair, "extrapolated": n < len(pairs),
            "measured_s": t2 - t0, **mem.report()}, sim


def run_engine(embs: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """ensure_vectors + matrix in a fresh temporary cache (Ray must be running), with where
    ensure_vectors' time went (``profile``)."""
    tmp = Path(tempfile.mkdtemp(prefix="rsa_bench_"))
    try:
        with TreeMemory() as mem:
            t0 = time.perf_counter()
            engine = RSAEngine(tmp, comparison="spearman")
            engine.ensure_vectors(embs)
            t1 = time.perf_counter()
            sim = engine.matrix(list(embs))
            t2 = time.perf_counter()
        disk = sum(p.stat().st_size for p in tmp.rglob("*.npy"))
        steps = [read_manifest(engine.vectors.path(k))["seconds"] for k in embs]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"seconds": t2 - t0, "ensure_vectors_s": t1 - t0, "matrix_s": t2 - t1,
            "vector_files_gb": disk / GB, "profile": profile(steps, t1 - t0), **mem.report()}, sim


def profile(steps: list[dict[str, float]], wall: float) -> dict[str, Any]:
    """Where ensure_vectors' wall time went: each step summed over the tasks' jobs (the RDM
    triangle, its ranks, the norm, writing the vector file), that work spread over the CPUs that
    ran it, and the rest (Ray scheduling and worker start-up, passing the embeddings, the
    manifests' file hashes) as what the wall time leaves."""
    cpus = max(1, min(len(steps), int(ray.cluster_resources().get("CPU", 1))))
    summed = {f"{k}_s": round(sum(s[k] for s in steps), 3) for k in steps[0]}
    work = sum(summed.values())
    return {"tasks": len(steps), "cpus": cpus, **summed, "jobs_s": round(work, 3),
            "per_task_s": {k: round(v / len(steps), 4) for k, v in summed.items()},
            "work_over_cpus_s": round(work / cpus, 3), "other_s": round(wall - work / cpus, 3),
            "shares": {k: round(v / cpus / wall, 3) for k, v in summed.items()}
            | {"other": round(1 - work / cpus / wall, 3)}}


def ranking_floor(emb: np.ndarray, tasks: int, cpus: int = 2, repeats: int = 3) -> dict[str, float]:
    """The floor of the engine's ranking on this machine: ``np.sort`` of one task's RDM triangle
    (float64, in place on a fresh copy, best of ``repeats``), times the tasks, over the CPUs."""
    upper = rdm_upper(emb)
    best = float("inf")
    for _ in range(repeats):
        values = upper.copy()
        start = time.perf_counter()
        values.sort()
        best = min(best, time.perf_counter() - start)
    return {"values_per_task": int(upper.size), "sort_s_per_task": best, "cpus": cpus, "floor_s": best * tasks / cpus}


def structure(sim: np.ndarray, groups: int) -> dict[str, float]:
    """Mean off-diagonal RSA within and across the latent groups (shows the matrix is not flat)."""
    g = np.arange(sim.shape[0]) % groups
    same, off = g[:, None] == g[None, :], ~np.eye(sim.shape[0], dtype=bool)
    within, across = sim[same & off], sim[~same]
    return {"within_group_mean": float(within.mean()) if within.size else None,
            "across_group_mean": float(across.mean()) if across.size else None,
            "min": float(sim[off].min()), "max": float(sim[off].max())}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", "-T", type=int, default=20)
    p.add_argument("--probes", "-M", type=int, default=5000)
    p.add_argument("--dim", "-d", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", type=int, default=4, help="latent task groups")
    p.add_argument("--rank", type=int, default=16, help="latent probe factors")
    p.add_argument("--scipy-budget", type=float, default=120.0, help="seconds; past it the loop is extrapolated")
    p.add_argument("--scipy-pairs", type=int, default=3, help="pairs timed at least when extrapolating")
    p.add_argument("--large-m", type=int, default=20_000, help="probes for the engine-only run (0: skip)")
    p.add_argument("--large-t", type=int, default=20, help="tasks for the engine-only run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "similarity.json")
    p.add_argument("--smoke", action="store_true", help="seconds: T = 3, M = 60, d = 8, large run T = 2, M = 300")
    args = p.parse_args()
    if args.smoke:
        args.tasks, args.probes, args.dim, args.large_t, args.large_m, args.scipy_budget = 3, 60, 8, 2, 300, 5.0
    return args


def main() -> None:
    args = parse_args()
    if args.tasks < 2 or args.groups < 1 or args.scipy_pairs < 1:
        sys.exit("need --tasks >= 2, --groups >= 1, --scipy-pairs >= 1")
    embs = make_embeddings(args.tasks, args.probes, args.dim, args.groups, args.rank, args.seed)
    floor = ranking_floor(next(iter(embs.values())), args.tasks)
    print(f"ranking floor: np.sort of {floor['values_per_task']:,} values {floor['sort_s_per_task']:.3f} s a task, "
          f"{floor['floor_s']:.2f} s for {args.tasks} tasks on {floor['cpus']} CPUs", flush=True)
    result: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "ram_gb": psutil.virtual_memory().total / GB,
                    "python": platform.python_version(), "numpy": np.__version__, "ray": ray.__version__,
                    "rsatoolbox": None if PEER_MISSING else version("rsatoolbox"),
                    "load_avg_start": os.getloadavg()},
        "peer": PEER_MISSING or "rsatoolbox",
        "memory_method": MEMORY_METHOD,
    }
    print(f"T={args.tasks} M={args.probes} d={args.dim}: {args.probes * (args.probes - 1) // 2:,} RDM entries per task",
          flush=True)
    res: dict[str, dict[str, Any]] = {}
    if PEER_MISSING:
        print(f"warning: {PEER_MISSING}", flush=True)
    else:
        res["rsatoolbox"], sim_rsa = run_rsatoolbox(embs)
        print(f"rsatoolbox {res['rsatoolbox']['seconds']:.1f} s", flush=True)
    res["scipy"], sim_scipy = run_scipy(embs, args.scipy_budget, args.scipy_pairs, args.seed)
    print(f"scipy      {res['scipy']['seconds']:.1f} s ({res['scipy']['pairs_timed']} pairs timed)", flush=True)
    try:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        result["ray_init_s"] = time.perf_counter() - t0
        res["engine"], sim_eng = run_engine(embs)
        print(f"engine     {res['engine']['seconds']:.1f} s", flush=True)
        del embs
        if args.large_m:
            large = make_embeddings(args.large_t, args.large_m, args.dim, args.groups, args.rank, args.seed + 1)
            result["large"], sim_large = run_engine(large)
            result["large"].update(tasks=args.large_t, probes=args.large_m, structure=structure(sim_large, args.groups),
                                   ensure_vectors_per_task_s=result["large"]["ensure_vectors_s"] / args.large_t)
            del large
    finally:
        ray.shutdown()
    done = ~np.isnan(sim_scipy)
    result["methods"] = res
    result["structure"] = structure(sim_eng, args.groups)
    result["max_abs_diff_vs_engine"] = {"scipy": float(np.abs(sim_scipy[done] - sim_eng[done]).max())}
    if not PEER_MISSING:
        result["max_abs_diff_vs_engine"]["rsatoolbox"] = float(np.abs(sim_rsa - sim_eng).max())
    eng_s = res["engine"]["seconds"]
    result["speedup"] = {k: res[k]["seconds"] / eng_s for k in SPEEDUP_TARGETS if k in res}
    targets = {f"{k}_over_engine >= {v:g}x": result["speedup"][k] >= v for k, v in SPEEDUP_TARGETS.items()
               if k in res}
    floor["engine_over_floor"] = round(eng_s / floor["floor_s"], 3)
    result["ranking_floor"] = floor
    targets[f"engine within {FLOOR_TARGET:g}x the ranking floor"] = floor["engine_over_floor"] <= FLOOR_TARGET
    diffs = result["max_abs_diff_vs_engine"]
    targets.update({f"max_abs_diff_{k} < {AGREE_TOL:g}": v < AGREE_TOL for k, v in diffs.items()})
    if args.large_m:
        targets[f"large peak_rss < {LARGE_PEAK_TARGET_GB:g} GB"] = result["large"]["peak_rss_gb"] < LARGE_PEAK_TARGET_GB
    result["targets_met"] = targets
    result["machine"]["load_avg_end"] = os.getloadavg()
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_suffix(".json.tmp")
    part.write_text(json.dumps(result, indent=2, default=float))
    os.replace(part, args.out)
    print(f"wrote {args.out}")


def print_table(r: dict[str, Any]) -> None:
    rows = list(r["methods"].items())
    if "large" in r:
        rows.append((f"engine T={r['large']['tasks']} M={r['large']['probes']}", r["large"]))
    print(f"\n{'method':<26}{'seconds':>10}{'x engine':>10}{'peak RSS GB':>13}{'peak PSS GB':>13}{'base RSS GB':>13}")
    for name, v in rows:
        ratio = r["speedup"].get(name)
        print(f"{name:<26}{v['seconds']:>10.2f}{(f'{ratio:.1f}' if ratio else '-'):>10}"
              f"{v['peak_rss_gb']:>13.2f}{v['peak_pss_gb']:>13.2f}{v['baseline_rss_gb']:>13.2f}")
    sc, en = r["methods"]["scipy"], r["methods"]["engine"]
    print(f"\nscipy: rdm {sc['rdm_s']:.2f} s + {sc['seconds_per_pair']:.2f} s/pair x {sc['pairs_total']} pairs"
          f" ({'extrapolated from ' + str(sc['pairs_timed']) if sc['extrapolated'] else 'all timed'})")
    print(f"engine: ensure_vectors {en['ensure_vectors_s']:.2f} s, matrix {en['matrix_s']:.2f} s;"
          f" ray.init {r['ray_init_s']:.2f} s")
    print(f"ensure_vectors profile: {en['profile']}")
    floor = r["ranking_floor"]
    print(f"ranking floor {floor['floor_s']:.2f} s; engine / floor {floor['engine_over_floor']}")
    if "large" in r:
        lg = r["large"]
        print(f"large: ensure_vectors {lg['ensure_vectors_s']:.1f} s ({lg['ensure_vectors_per_task_s']:.1f} s/task),"
              f" matrix {lg['matrix_s']:.1f} s, vector files {lg['vector_files_gb']:.2f} GB, peak RSS "
              f"{lg['peak_rss_gb']:.2f} GB (PSS {lg['peak_pss_gb']:.2f}); profile {lg['profile']['per_task_s']}")
    print(f"RSA structure: {r['structure']}")
    print(f"max |diff| vs engine: {r['max_abs_diff_vs_engine']}")
    for name, ok in r["targets_met"].items():
        print(f"  [{'met' if ok else 'missed'}] {name}")


if __name__ == "__main__":
    main()
