"""The budget sampler: each epoch draws N samples across the pretraining subset's tasks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from tasksim_ray.config.budget import task_counts


class BudgetSampler(Sampler[int]):
    """Yields ``n_per_epoch`` sample indices per epoch, ``counts[t]`` of them from task t's pool, shuffled together.

    Within a task the draw is without replacement; a count larger than the pool takes whole permutations of the pool
    and then part of one, so every sample is used as evenly as possible. Epoch e is seeded by ``(seed, e)``, so a run
    is reproducible and successive epochs differ.
    """

    def __init__(
        self,
        pools: Sequence[np.ndarray],
        n_per_epoch: int,
        scheme: str = "uniform",
        temperature: float = 1.0,
        seed: int = 0,
    ) -> None:
        if n_per_epoch < 1:
            raise ValueError(f"n_per_epoch must be at least 1, got {n_per_epoch}")
        self.pools = [np.asarray(pool, dtype=np.int64).ravel() for pool in pools]
        if not self.pools:
            raise ValueError("no task pools given")
        empty = [t for t, pool in enumerate(self.pools) if pool.size == 0]
        if empty:
            raise ValueError(f"task pools {empty} are empty")
        self.n_per_epoch = n_per_epoch
        self.seed = seed
        self.counts = task_counts(n_per_epoch, [pool.size for pool in self.pools], scheme, temperature)
        self.epoch = 0
        self._universe = np.unique(np.concatenate(self.pools))
        self._seen = np.zeros(self._universe.size, dtype=bool)

    def __len__(self) -> int:
        return self.n_per_epoch

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        parts = []
        for pool, count in zip(self.pools, self.counts):
            full, rest = divmod(int(count), pool.size)
            parts.extend(pool[rng.permutation(pool.size)] for _ in range(full))
            parts.append(pool[rng.permutation(pool.size)[:rest]])
        return rng.permutation(np.concatenate(parts))

    def __iter__(self) -> Iterator[int]:
        # drawn when iteration starts, so the epoch advances even if the caller stops early
        order = self._draw(self.epoch)
        self.epoch += 1
        return self._emit(order)

    def _emit(self, order: np.ndarray) -> Iterator[int]:
        positions = np.searchsorted(self._universe, order)
        for index, position in zip(order.tolist(), positions.tolist()):
            self._seen[position] = True
            yield index

    def unique_seen(self) -> int:
        """Distinct indices yielded so far over all epochs: the number of pretraining labels actually used."""
        return int(self._seen.sum())


class ShardSampler(Sampler[int]):
    """Rank ``rank``'s share of each epoch of ``base``: every ``world``-th index. Every rank draws
    the whole epoch (same seed), so the ranks together see exactly the epoch one worker would."""

    def __init__(self, base: Sampler[int], rank: int, world: int) -> None:
        self.base, self.rank, self.world = base, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.base), self.world))

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.base)[self.rank::self.world])
