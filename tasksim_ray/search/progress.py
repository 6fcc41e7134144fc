"""Live search progress: a line per finished trial in the terminal, and the same counts as Ray
metrics (``tasksim_search_*``) on the dashboard and its Prometheus endpoint."""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from tasksim_ray.infra.metrics import search_status
from tasksim_ray.infra.progress import Console


class SearchProgress(tune.Callback):
    """Counts trials running and finished and tracks the best objective so far."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total = console, total
        self.running: set[str] = set()
        self.finished = 0
        self.failed = 0
        self.best = math.inf

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment (to resume it); the console holds a
        # lock and is made afresh after a restore
        return {k: v for k, v in self.__dict__.items() if k != "console"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, console=Console())

    def _publish(self) -> None:
        search_status(len(self.running), self.finished, self.failed, self.best if math.isfinite(self.best) else None)

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
