"""Out-of-core, incremental, Ray-parallel RSA.

Each task's RDM triangle becomes a comparison vector (exact doubled centred ranks for Spearman,
centred values for Pearson) stored once as the artifact ``<key>/vector.npy`` (its squared norm in
the manifest), keyed by what produced the embedding (model, probe set, layer) and the comparison.
Pairs are inner products of those vectors, summed over blocks of the triangle by Ray tasks, and
kept in a pair store: adding a task to a finished
study computes only its vector and its new row and column. Memory stays bounded: the full M x M
RDM never exists, a block holds ``block_bytes`` of vectors, and ranking jobs run only as many at
once as ``memory_budget_gb`` allows (20,000 probes means 2e8 entries per task).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray

from tasksim_ray.errors import TasksimError
from tasksim_ray.infra.cache import Artifacts, artifact_key, write_json_atomic, writing
from tasksim_ray.infra.jobs import Job, ManifestResults, run_jobs
from tasksim_ray.infra.metrics import similarity_pairs
from tasksim_ray.similarity.inputs import SimilarityInputs, check_embeddings
from tasksim_ray.similarity.rsa import (
    CHUNK,
    Comparison,
    comparison_vector,
    doubled_centred_ranks,
    n_pairs,
    ranking_bytes,
    rdm_upper,
    rsa_matrix,
)

VECTOR_KIND, VECTOR_FILE = "rsa-vector", "vector.npy"


def _build_vector(emb: np.ndarray, comparison: Comparison, root: str, key: str) -> float:
    """Write one task's comparison vector as the artifact ``<root>/<key>/`` (its squared norm in the
    manifest, with the seconds of each step: ``seconds``) and return that norm. Runs as a 1-CPU Ray
    task: Ray sets OMP_NUM_THREADS to match, which BLAS honours."""
    clock = [time.perf_counter()]

    def lap() -> float:
        clock.append(time.perf_counter())
        return round(clock[-1] - clock[-2], 4)

    upper = rdm_upper(emb)
    seconds = {"rdm": lap()}
    vec = doubled_centred_ranks(upper) if comparison == "spearman" else comparison_vector(upper, comparison)
    del upper
    seconds["rank"] = lap()
    norm2 = 0.0
    for lo in range(0, vec.size, CHUNK):  # chunked: a float64 copy of 2e8 entries would be 1.6 GB
        part = vec[lo:lo + CHUNK].astype(np.float64)
        norm2 += float(np.dot(part, part))
    seconds["norm"] = lap()
    with Artifacts(Path(root), VECTOR_KIND).build(key, norm2=norm2, seconds=seconds) as tmp:
        with writing(tmp / VECTOR_FILE):
            np.save(tmp / VECTOR_FILE, vec)
        seconds["write"] = lap()  # the manifest (sha256 of the file) comes after: in the job, not here
    return norm2


def _gram_block(row_paths: list[str], col_paths: list[str], lo: int, hi: int) -> np.ndarray:
    """Partial inner products of vector rows x cols over entries [lo, hi)."""
    def load(paths: list[str]) -> np.ndarray:
        return np.stack([np.load(p, mmap_mode="r")[lo:hi].astype(np.float64) for p in paths])

    rows = load(row_paths)
    cols = rows if row_paths == col_paths else load(col_paths)
    return rows @ cols.T


class RSAEngine:
    """Spearman/Pearson RSA over cached comparison vectors. Needs a running Ray."""

    def __init__(self, cache_dir: Path, comparison: Comparison = "spearman", block_bytes: int = 256 << 20,
                 memory_budget_gb: float = 8.0) -> None:
        if comparison not in ("spearman", "pearson"):
            raise TasksimError(f"the blocked RSA engine supports spearman and pearson, not '{comparison}'")
        self.dir = cache_dir / comparison
        self.dir.mkdir(parents=True, exist_ok=True)
        self.vectors = Artifacts(self.dir, VECTOR_KIND)
        self.comparison = comparison
        self.block_bytes = block_bytes
        self.memory_budget = memory_budget_gb * 2**30
        self._pairs_path = self.dir / "pairs.json"
        self._pairs: dict[str, float] = json.loads(self._pairs_path.read_text()) if self._pairs_path.exists() else {}

    def _vec_path(self, key: str) -> Path:
        return self.vectors.path(key) / VECTOR_FILE

    @staticmethod
    def _pair(a: str, b: str) -> str:
        return "|".join(sorted((a, b)))

    def ensure_vectors(self, embs: dict[str, np.ndarray], on_done: Callable[[str, bool], None] | None = None,
                       tasks: dict[str, str] | None = None) -> None:
        """Build the comparison vector of every key not yet cached, as memory-bounded Ray tasks (named
        ``rsa-vector:<task>`` on the dashboard, ``tasks`` giving each key's task)."""
        check_embeddings(embs)
        m = next(iter(embs.values())).shape[0]
        need = ranking_bytes(n_pairs(m)) + (64 << 20)
        parallel = max(1, min(int(self.memory_budget // max(need, 1)), int(ray.cluster_resources().get("CPU", 1))))
        reservable = int(ray.cluster_resources().get("memory", need))  # never ask for more than exists
        memory = min(need, int(self.memory_budget), reservable)
        jobs = [Job(k, k, _build_vector, (emb, self.comparison, str(self.dir), k), num_cpus=1, memory=memory,
                    title=f"{VECTOR_KIND}:{(tasks or {}).get(k, k)}") for k, emb in embs.items()]
        norms = run_jobs(jobs, ManifestResults(self.vectors, "norm2"), on_done, max_running=parallel)
        self._pairs |= {self._pair(k, k): n for k, n in zip(embs, norms)}
        write_json_atomic(self._pairs_path, self._pairs)

    def matrix(self, keys: list[str]) -> np.ndarray:
        """Correlation matrix over ``keys``; computes only pairs missing from the pair store."""
        missing_rows = sorted({a for a in keys for b in keys if self._pair(a, b) not in self._pairs})
        if missing_rows:
            self._compute_rows(missing_rows, keys)
        t = len(keys)
        gram = np.array([[self._pairs[self._pair(a, b)] for b in keys] for a in keys])
        norms = np.sqrt(np.diag(gram))
        if np.any(norms == 0):
            bad = [keys[i] for i in np.flatnonzero(norms == 0)]
            raise TasksimError(f"constant RDM (all dissimilarities equal) for {bad}; RSA is undefined")
        sim = gram / np.outer(norms, norms)
        sim[np.diag_indices(t)] = 1.0
        return np.clip((sim + sim.T) / 2, -1.0, 1.0)

    def _compute_rows(self, rows: list[str], cols: list[str]) -> None:
        size = np.load(self._vec_path(rows[0]), mmap_mode="r").shape[0]
        step = max(1, self.block_bytes // (8 * (len(rows) + len(cols))))
        row_paths = [str(self._vec_path(k)) for k in rows]
        col_paths = [str(self._vec_path(k)) for k in cols]
        block = ray.remote(_gram_block)
        parts = [block.options(num_cpus=1, name=f"rsa-gram:{lo}-{min(lo + step, size)}")
                 .remote(row_paths, col_paths, lo, min(lo + step, size)) for lo in range(0, size, step)]
        gram = np.zeros((len(rows), len(cols)))
        while parts:
            done, parts = ray.wait(parts, num_returns=1)
            gram += ray.get(done[0])
        new = {self._pair(a, b) for a in rows for b in cols} - set(self._pairs)
        for i, a in enumerate(rows):
            for j, b in enumerate(cols):
                self._pairs[self._pair(a, b)] = float(gram[i, j])
        write_json_atomic(self._pairs_path, self._pairs)
        similarity_pairs(len(new))


def rsa_similarity(inputs: SimilarityInputs, comparison: Comparison = "spearman",
                   memory_budget_gb: float = 8.0) -> np.ndarray:
    """The RSA metric: through this engine when the pipeline gives a cache and the comparison is
    Spearman or Pearson (per-task vectors and pair sums reused across runs), else in memory."""
    cache = inputs.cache
    if cache is None or comparison == "kendall":
        return rsa_matrix(inputs, comparison)
    engine = RSAEngine(cache.root / "rsa_vectors", comparison, memory_budget_gb=memory_budget_gb)
    keys = {t: artifact_key(VECTOR_KIND, cache.keys[t]) for t in inputs.embeddings}  # a vector per embedding
    names = {k: t for t, k in keys.items()}
    on_done = (lambda key, cached: cache.on_done(names[key], cached)) if cache.on_done else None
    engine.ensure_vectors({keys[t]: e for t, e in inputs.embeddings.items()}, on_done=on_done, tasks=names)
    return engine.matrix(list(keys.values()))
