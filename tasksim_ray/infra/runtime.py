"""Starting or joining Ray: join the cluster named by RAY_ADDRESS (or config), else start locally.

Resources are passed only to a local start: ``ray.init(num_cpus=...)`` is an error when
connecting to an existing cluster. The shared artifact store, if one is active, reaches every
worker on every node through the job's ``runtime_env`` (see ``tasksim_ray.infra.storage``); names
registered in this driver (a user's backbone) reach them through ``registry.share_with_workers``.
"""

from __future__ import annotations

import json
import logging
import os

import ray

from tasksim_ray.config import RayConfig
from tasksim_ray.errors import TasksimError
from tasksim_ray.infra import interrupts, resources, sessions, storage
from tasksim_ray.registry import share_with_workers


def ensure_ray(cfg: RayConfig) -> None:
    env = storage.worker_env()
    resources.set_pending_timeout(cfg.pending_timeout_s)
    if not ray.is_initialized():
        _start(cfg, {"env_vars": env} if env else None)
        interrupts.reinstall()  # ray.init took SIGTERM over (its handler dumps a C++ stack)
    elif env and ray.get_runtime_context().runtime_env.get("env_vars", {}).get(storage.ENV) != env[storage.ENV]:
        uri = json.loads(env[storage.ENV])["uri"]
        raise TasksimError(f"storage.uri {uri}: Ray was started without this store in its runtime_env, so its "
                           "workers cannot reach it; let tasksim start Ray, or start it with "
                           "runtime_env={'env_vars': tasksim_ray.infra.storage.worker_env()}")
    share_with_workers()
    quiet_ray_data()


class _DropMessages(logging.Filter):
    """Drops the records of one logger that start with any of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Ray's start-up notices a tasksim user cannot act on, by logger. Token auth stays on (the project's
# rule), so "it is enabled, set RAY_AUTH_MODE=disabled to opt out" is noise; the warning that it is
# *disabled* is kept. Ray Data announces that the progress bars we turned off are off.
_UNACTIONABLE = {
    "ray._private.authentication.authentication_token_setup": ("Token authentication is enabled for this",),
    "ray.data._internal.progress": ("Progress bars disabled", "Progress bars for operators disabled"),
}


def quiet_ray_notices() -> None:
    """Filter Ray's start-up notices that a user cannot act on (idempotent)."""
    for name, prefixes in _UNACTIONABLE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(*prefixes))


def _start(cfg: RayConfig, runtime_env: dict | None) -> None:
    quiet_ray_notices()
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env)
    else:
        # address="local": always a fresh instance, never another user's `ray start` cluster; in a temp
        # dir of its own, so the agents a killed driver leaves behind can be found and stopped next time
        sessions.reap_orphans()
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=cfg.include_dashboard,
                 logging_level=logging.WARNING, configure_logging=True, runtime_env=runtime_env,
                 _temp_dir=str(sessions.new_session()))


def quiet_ray_data() -> None:
    """Keep Ray Data's per-operator progress logging out of our terminal; our bars are enough."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.issue_detectors_config.high_memory_detector_config.detection_time_interval_s = -1
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    quiet_ray_notices()


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0.0))


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0.0))
