"""Live search progress: a line per finished trial in the terminal, and the same counts as Ray
metrics (``tasksim_search_*``) on the dashboard and its Prometheus endpoint."""

from __future__ import annotations

import math
from typing import Any

from ray import tune
from ray.util.metrics import Gauge

from tasksim_ray.progress import Console


class SearchProgress(tune.Callback):
    """Counts trials running and finished and tracks the best objective so far."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total = console, total
        self.running: set[str] = set()
        self.finished = 0
        self.failed = 0
        self.best = math.inf
        self._gauges: dict[str, Gauge] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (to resume it): the console and the
        # metric handles hold locks, and are made afresh after a restore
        return {k: v for k, v in self.__dict__.items() if k not in ("console", "_gauges")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, console=Console(), _gauges=None)

    def _publish(self) -> None:
        if self._gauges is None:  # created lazily: metrics need a connected Ray worker
            self._gauges = {name: Gauge(f"tasksim_search_{name}", description=desc) for name, desc in [
                ("trials_running", "search trials running"), ("trials_finished", "search trials finished"),
                ("trials_failed", "search trials that raised"), ("best_objective", "best objective so far")]}
        self._gauges["trials_running"].set(len(self.running))
        self._gauges["trials_finished"].set(self.finished)
        self._gauges["trials_failed"].set(self.failed)
        if math.isfinite(self.best):
            self._gauges["best_objective"].set(self.best)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._publish()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "objective" in result:
            self.best = min(self.best, float(result["objective"]))
        self._publish()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.finished += 1
        result = trial.last_result or {}
        self.console.print(f"\\[search] trial {trial.trial_id} done after {result.get('training_iteration', 0)} "
                           f"epoch(s): objective {result.get('objective', float('nan')):.4f} "
                           f"(subset {', '.join(trial.config.get('subset', []))}); best so far {self.best:.4f}; "
                           f"{self.finished + self.failed}/{self.total} trials, {len(self.running)} running",
                           highlight=False)
        self._publish()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed += 1
        self.console.print(f"[yellow]\\[search] trial {trial.trial_id} failed[/yellow] "
                           f"(subset {', '.join(trial.config.get('subset', []))}); the search goes on")
        self._publish()
