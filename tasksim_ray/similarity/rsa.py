"""Representational similarity analysis (RSA) between task models.

RDM_k = 1 - Pearson correlation between the probe embeddings of task k's model; RSA(a, b)
compares the upper triangles of RDM_a and RDM_b with Spearman (default), Pearson or Kendall's
tau-b. For Spearman and Pearson each task's triangle is turned once into a centred comparison
vector (exact average ranks for Spearman), and every pair follows from inner products of those
vectors: no per-pair re-ranking. ``engine.py`` runs the same computation out of core for large
probe sets.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.stats import kendalltau

from tasksim_ray.errors import TasksimError
from tasksim_ray.similarity.inputs import SimilarityInputs, check_embeddings

Comparison = Literal["spearman", "pearson", "kendall"]
_ROW_BLOCK_BYTES = 64 << 20


def n_pairs(m: int) -> int:
    return m * (m - 1) // 2


def _row_standardise(emb: np.ndarray, task: str = "") -> np.ndarray:
    """Rows centred to mean 0 and scaled to norm 1, so Pearson(i, j) is a dot product."""
    flat = int((np.ptp(emb, axis=1) == 0).sum())  # exact: centring leaves rounding noise
    if flat:
        raise TasksimError(f"task '{task}': {flat} probe embedding row(s) are constant (zero variance), "
                           "so their Pearson RDM entries are undefined")
    z = emb.astype(np.float64) - emb.mean(axis=1, keepdims=True)
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def rdm_upper(emb: np.ndarray, task: str = "", out: np.ndarray | None = None) -> np.ndarray:
    """Upper triangle (row-major, i < j) of 1 - Pearson(probe_i, probe_j), built in row blocks so
    the full M x M matrix never exists; ``out`` may be a memory-mapped array."""
    z = _row_standardise(emb, task)
    m = z.shape[0]
    v = np.empty(n_pairs(m)) if out is None else out
    rows = max(1, _ROW_BLOCK_BYTES // (8 * m))
    pos = 0
    for i0 in range(0, m - 1, rows):
        corr = z[i0:i0 + rows] @ z[i0 + 1:].T  # the block's rows against the columns right of its first row
        for r in range(corr.shape[0]):
            i = i0 + r
            if i >= m - 1:
                break
            seg = corr[r, r:]  # columns i + 1 ...
            np.subtract(1.0, seg, out=v[pos:pos + seg.size])
            pos += seg.size
    return v


def rdm(emb: np.ndarray) -> np.ndarray:
    """The full RDM (for small probe sets and plots)."""
    z = _row_standardise(emb)
    d = 1.0 - z @ z.T
    np.fill_diagonal(d, 0.0)
    return d


def _sortable_keys(v: np.ndarray) -> np.ndarray:
    """uint64 keys whose integer order is the float64 order (sign-aware IEEE-754 trick);
    adding 0.0 turns -0.0 into 0.0, which compare equal as floats."""
    bits = (v + 0.0).view(np.uint64)
    flip = np.where(bits >> np.uint64(63), np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64(1 << 63))
    return bits ^ flip


def _repair_runs(order: np.ndarray, same: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Within runs of sorted positions whose packed top bits agree (``same[i]``: position i + 1 agrees
    with i), order by the full value; returns the boolean mask of positions (in sorted order) whose
    value equals the previous one (exact ties)."""
    in_run = np.zeros(order.size, dtype=bool)
    in_run[:-1] |= same
    in_run[1:] |= same
    pos = np.flatnonzero(in_run)
    tie = np.zeros(order.size, dtype=bool)
    if pos.size == 0:
        return tie
    run_id = np.cumsum(np.r_[True, ~same[pos[:-1]]])  # pos[i] starts a new run unless same as previous
    sub = order[pos]
    vals = v[sub]
    fix = np.lexsort((vals, run_id))
    order[pos] = sub[fix]
    vals = vals[fix]
    tie[pos[1:]] = (vals[1:] == vals[:-1]) & (run_id[fix][1:] == run_id[fix][:-1])
    return tie


PACKED_MAX = 1 << 24  # above this, too few value bits fit beside the index for the packed sort
CHUNK = 1 << 22
STEP = 1 << 16  # entries per pass of the key arithmetic: its arrays (512 KiB each) stay in cache


def _packed_order_and_ties(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packs the top bits of each value with its index into one uint64 and sorts that
    (vectorised integer sorting is several times faster than argsort); values can only be
    misordered or tied where the packed top bits agree, and those short runs are repaired. The key
    arithmetic runs in cache-sized steps into preallocated arrays: over whole arrays, each of its
    eight passes would stream (and first fault in) 8 bytes an entry from memory."""
    n = v.size
    idx_bits = max(1, (n - 1).bit_length())
    shift, top = np.uint64(idx_bits), np.uint64(1 << 63)
    # keep the value bits that vary: keys relative to the smallest, the span's top (64 - idx_bits) bits
    # (an RDM's values share most exponent bits, so this keeps about 10 more bits of mantissa: fewer runs)
    span = np.array([v.min(), v.max()] if n else [0.0, 0.0], dtype=np.float64)
    if np.isnan(span).any():  # NaN has no place in the order: the plain top bits, as they come
        floor, drop = np.uint64(0), shift
    else:
        ends = _sortable_keys(span)
        floor, drop = ends[0], np.uint64(max(0, int(ends[1] - ends[0]).bit_length() - (64 - idx_bits)))
    keys = np.empty(n, dtype=np.uint64)
    base = np.arange(min(n, STEP), dtype=np.uint64)
    value, flip = np.empty(len(base)), np.empty(len(base), dtype=np.uint64)
    for lo in range(0, n, STEP):
        m, k = min(STEP, n - lo), keys[lo:lo + STEP]
        bits = np.add(v[lo:lo + m], 0.0, out=value[:m]).view(np.uint64)  # -0.0 -> 0.0: they compare equal
        np.right_shift(bits, np.uint64(63), out=flip[:m])  # sign-aware IEEE-754 order: negatives flip every
        np.negative(flip[:m], out=flip[:m])  # bit, the rest only the sign bit
        np.bitwise_or(flip[:m], top, out=flip[:m])
        np.bitwise_xor(bits, flip[:m], out=k)
        np.subtract(k, floor, out=k)
        np.right_shift(k, drop, out=k)
        np.left_shift(k, shift, out=k)
        np.bitwise_or(k, np.add(base[:m], np.uint64(lo), out=flip[:m]), out=k)
    keys.sort()
    same = np.empty(max(n - 1, 0), dtype=bool)  # position i + 1's top bits equal position i's
    for lo in range(0, n - 1, STEP):
        m = min(STEP, n - 1 - lo)
        np.equal(np.right_shift(keys[lo + 1:lo + 1 + m], shift, out=flip[:m]),
                 np.right_shift(keys[lo:lo + m], shift, out=value[:m].view(np.uint64)), out=same[lo:lo + m])
    np.bitwise_and(keys, np.uint64((1 << idx_bits) - 1), out=keys)
    order = keys.view(np.int64)
    tie = _repair_runs(order, same, v)
    return order, tie


def _value_groups(v: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's group (uint8 while there are few): contiguous ranges of value order holding about ``target``
    entries each (equal values always share one), and every group's first position in the sorted
    order. From a histogram of the sortable keys' top 20 bits (256 bins per octave)."""
    bins = np.empty(v.size, dtype=np.uint32)
    for lo in range(0, v.size, CHUNK):
        bins[lo:lo + CHUNK] = _sortable_keys(v[lo:lo + CHUNK]) >> np.uint64(44)
    counts = np.bincount(bins, minlength=1 << 20).cumsum()
    edges = np.unique(np.searchsorted(counts, np.arange(target, v.size, target), side="right"))
    edges = edges[edges > 0]
    of_bin = np.searchsorted(edges, np.arange(1 << 20), side="right").astype(np.uint8 if edges.size < 255 else np.int32)
    groups = of_bin[bins]
    return groups, np.r_[0, counts[edges - 1]]


def _assign_ranks(out: np.ndarray, order: np.ndarray, tie: np.ndarray, offset: int, n: int) -> None:
    """Doubled centred average ranks into ``out`` for the entries ``order`` (ascending, at sorted
    positions ``offset``...), ``tie`` marking those equal to the entry before them."""
    dtype = out.dtype
    for lo in range(0, order.size, CHUNK):
        hi = min(order.size, lo + CHUNK)
        out[order[lo:hi]] = np.arange(2 * (offset + lo) + 1 - n, 2 * (offset + hi) + 1 - n, 2, dtype=dtype)
    tied = np.flatnonzero(tie)
    if tied.size:
        first = np.r_[True, np.diff(tied) > 1]
        last = np.r_[first[1:], True]
        starts, ends = tied[first] - 1, tied[last] + 1
        lengths = ends - starts
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[order[np.repeat(starts, lengths) + offsets]] = np.repeat(2 * offset + starts + ends - n,
                                                                     lengths).astype(dtype)


def ranking_bytes(n: int) -> int:
    """Peak memory of ranking ``n`` float64 values (the values included): one packed sort keeps
    values, keys, their top bits, masks and ranks (about 30 bytes an entry); the grouped path keeps
    values, bins, groups and ranks (17) plus one group's sort."""
    return 32 * n if n <= PACKED_MAX else 18 * n + 48 * (PACKED_MAX // 2)


def doubled_centred_ranks(v: np.ndarray) -> np.ndarray:
    """2 * (average rank - mean rank) as exact integers; ties share their average rank.

    int32 while 2n fits (probe sets up to ~46,000), int64 beyond. Position i of the sorted
    order gets 2i + 1 - n; a tied run [s, e) gets the mean over the run, s + e - n. Up to
    ``PACKED_MAX`` entries in one packed sort; beyond, in groups of contiguous value ranges (one
    packed sort each), so memory stays near 17 bytes an entry (the values, groups, ranks)."""
    n = v.size
    out = np.empty(n, dtype=np.int32 if 2 * n < 2**31 else np.int64)
    if n <= PACKED_MAX:
        _assign_ranks(out, *_packed_order_and_ties(v), 0, n)
        return out
    groups, starts = _value_groups(v, PACKED_MAX // 2)
    for g, offset in enumerate(starts):
        idx = np.flatnonzero(groups == g)
        order, tie = _packed_order_and_ties(v[idx])
        _assign_ranks(out, idx[order], tie, int(offset), n)
    return out


def comparison_vector(v: np.ndarray, comparison: Comparison) -> np.ndarray:
    """Centred vector whose normalised inner products give the RDM comparison."""
    if comparison == "spearman":
        return doubled_centred_ranks(v).astype(np.float64)
    if comparison == "pearson":
        return v - v.mean()
    raise ValueError(f"no comparison vector for '{comparison}'")


def correlations_from_vectors(vecs: np.ndarray) -> np.ndarray:
    """Pearson correlation of centred row vectors, as one matrix product."""
    gram = vecs @ vecs.T
    norms = np.sqrt(np.diag(gram))
    if np.any(norms == 0):
        raise TasksimError("an RDM is constant (all dissimilarities equal); its correlation is undefined")
    sim = gram / np.outer(norms, norms)
    np.fill_diagonal(sim, 1.0)
    return np.clip((sim + sim.T) / 2, -1.0, 1.0)


def rsa_matrix(inputs: SimilarityInputs, comparison: Comparison = "spearman") -> np.ndarray:
    """T x T RSA matrix over ``inputs.embeddings`` (in memory; see ``engine`` for large M)."""
    check_embeddings(inputs.embeddings)
    uppers = [rdm_upper(e, t) for t, e in inputs.embeddings.items()]
    if comparison == "kendall":
        t = len(uppers)
        sim = np.eye(t)
        for a in range(t):
            for b in range(a + 1, t):
                sim[a, b] = sim[b, a] = kendalltau(uppers[a], uppers[b], variant="b").statistic
        return sim
    return correlations_from_vectors(np.stack([comparison_vector(u, comparison) for u in uppers]))
