"""What the cluster can run: every request checked before the first Ray task, and a limit on how
long one may wait for a node that can run it.

A Ray request no node can satisfy (a GPU on a CPU-only machine, half a GPU where there is none)
does not fail: it stays pending on the autoscaler for ever. So a run names its requests up front
(:class:`Request`, with the config key behind each resource) and :func:`check` compares them with
the alive nodes plus the node types the cluster's autoscaler can add, failing with one line naming
the key. An autoscaler whose node types are not published (Ray's v1 autoscaler keeps them to
itself) gets the benefit of the doubt, and :class:`PendingGuard` covers what remains: a request
that no alive node can run for ``ray.pending_timeout_s`` (the autoscaler cannot deliver, the only
node that could died) fails naming the resource instead of waiting for ever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray

from tasksim_ray.errors import TasksimError

Shape = Mapping[str, float]  # Ray resource name -> amount ("CPU", "GPU", "memory" in bytes, custom)
EPS = 1e-9
_settings = {"pending_timeout_s": 600.0}


def set_pending_timeout(seconds: float) -> None:
    """The limit every guard of this process uses (``ray.pending_timeout_s``, set by ``ensure_ray``)."""
    _settings["pending_timeout_s"] = float(seconds)


def pending_timeout() -> float:
    return _settings["pending_timeout_s"]


@dataclass(frozen=True)
class Request:
    """``count`` bundles of ``shape`` that a stage asks Ray for (``count`` > 1: at the same time, as
    Ray Train's workers, beside ``plus``, what the job that started them holds); ``keys`` names the
    config key behind each resource, ``what`` the asker."""

    what: str
    shape: Shape
    keys: Mapping[str, str] = field(default_factory=dict)
    count: int = 1
    plus: Shape = field(default_factory=dict)  # held meanwhile by the work that waits for the bundles


@dataclass(frozen=True)
class Capacity:
    """The alive nodes' total resources, and the autoscaler's node types (resources, most nodes of
    that type; -1: no limit). ``autoscaler``: one runs, whether or not its types are known."""

    nodes: list[dict[str, float]]
    node_types: list[tuple[dict[str, float], int]]
    autoscaler: bool

    @property
    def knows_all(self) -> bool:
        """Whether every node the cluster can ever have is described (no autoscaler, or a known one)."""
        return not self.autoscaler or bool(self.node_types)


def describe(shape: Shape) -> str:
    """``{"CPU": 1, "GPU": 0.5}`` -> ``1 CPU + 0.5 GPU`` (memory in GiB; Ray's bookkeeping resources,
    ``node:<ip>`` and the object store, left out)."""
    order = {"CPU": 0, "GPU": 1, "memory": 2}
    kept = sorted(((k, v) for k, v in shape.items() if v > 0 and not k.startswith(("node:", "object_store"))),
                  key=lambda kv: (order.get(kv[0], 3), kv[0]))
    parts = [f"{v / 2**30:.3g} GiB memory" if k == "memory" else f"{v:g} {k}" for k, v in kept]
    return " + ".join(parts) or "nothing"


def fits(shape: Shape, node: Mapping[str, float]) -> bool:
    return all(node.get(k, 0.0) + EPS >= v for k, v in shape.items() if v > 0)


def alive_nodes() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def capacity() -> Capacity:
    """What the running cluster has and can add (Ray must be initialised)."""
    return Capacity(alive_nodes(), list(_node_types()), _autoscaler_running())


def _node_types() -> Iterator[tuple[dict[str, float], int]]:
    """The node types an autoscaler publishes in the GCS (autoscaler v2, KubeRay)."""
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # an older GCS or no config service: nothing published
        return
    for group in getattr(config, "node_group_configs", None) or []:
        if group.max_count != 0 and group.resources:
            yield {k: float(v) for k, v in group.resources.items()}, int(group.max_count)


def _autoscaler_running() -> bool:
    """Whether an autoscaler can add nodes. Ray's monitor runs on every cluster; on one started by
    hand (or by ``ray.init``) it only mirrors the nodes, as read-only types named ``node_<id>``. A
    monitor that has not reported yet may be either (but a Ray this process started has none)."""
    import json

    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_initialized

    node = ray._private.worker._global_node
    if node is not None and node.head:  # this process started the Ray: nothing can scale it
        return False
    try:
        raw = _internal_kv_initialized() and _internal_kv_get("__autoscaling_status")
        report = json.loads(raw).get("autoscaler_report") if raw else None
    except Exception:
        return True
    if not report:
        return True  # not known yet: give it the benefit of the doubt
    types = set((report.get("node_type_mapping") or {}).values()) | set(report.get("active_nodes") or {})
    return not types or not all(t.startswith("node_") for t in types)


def _where(cap: Capacity) -> str:
    """The cluster in a few words, for an error."""
    sizes = sorted({describe(n) for n in cap.nodes}) or ["none"]
    types = "" if not cap.node_types else "; autoscaler node types: " + ", ".join(
        sorted({describe(t) for t, _ in cap.node_types}))
    return f"nodes: {', '.join(sizes)}{types}"


def _missing(request: Request, cap: Capacity) -> str | None:
    """Why no node of ``cap`` can ever run ``request`` (None if one can)."""
    shapes = cap.nodes + [t for t, _ in cap.node_types]
    if not any(fits(request.shape, s) for s in shapes):
        lacking = [k for k, v in request.shape.items() if v > 0 and not any(s.get(k, 0.0) + EPS >= v for s in shapes)]
        keys = [request.keys.get(k, k) for k in lacking or [k for k, v in request.shape.items() if v > 0]]
        return (f"{' and '.join(dict.fromkeys(keys))}: {request.what} asks for {describe(request.shape)}, but no node "
                f"{'or autoscaler node type ' if cap.node_types else ''}of the cluster has "
                f"{'that' if not lacking else ' + '.join(lacking)} ({_where(cap)})")
    if request.count > 1:
        total: dict[str, float] = {}
        for node in cap.nodes:
            for k, v in node.items():
                total[k] = total.get(k, 0.0) + v
        for node_type, most in cap.node_types:
            for k, v in node_type.items():
                total[k] = total.get(k, 0.0) + (float("inf") if most < 0 else v * most)
        need = {k: v * request.count + request.plus.get(k, 0.0) for k, v in request.shape.items() if v > 0}
        short = [k for k, v in need.items() if total.get(k, 0.0) + EPS < v]
        if short:
            keys = [request.keys.get(k, k) for k in short]
            extra = f" beside the {describe(request.plus)} of the job that starts them" if request.plus else ""
            return (f"{' and '.join(dict.fromkeys(keys))}: {request.what} need {request.count} x "
                    f"{describe(request.shape)} at once{extra}, more {' and '.join(short)} than the cluster "
                    f"can have ({_where(cap)})")
    return None


def check(requests: list[Request], cap: Capacity | None = None) -> None:
    """Refuse, in one line naming the config key, the first request no node can ever run. With an
    autoscaler whose node types are unknown, only what the alive nodes cannot run is let through
    (the pending limit then bounds the wait)."""
    cap = cap or capacity()
    if not cap.knows_all:
        return
    for request in requests:
        reason = _missing(request, cap)
        if reason:
            raise TasksimError(reason)


class PendingGuard:
    """Bounds the wait of pending Ray work: :meth:`check` (called while waiting) fails once a shape
    has had no alive node able to run it for ``pending_timeout_s`` seconds; work that merely queues
    behind other work on nodes that can run it waits as long as it needs."""

    def __init__(self, limit_s: float | None = None, poll_s: float = 5.0) -> None:
        self.limit = pending_timeout() if limit_s is None else limit_s
        self.poll = poll_s
        self.since: dict[tuple[tuple[str, float], ...], float] = {}
        self.last = 0.0

    def check(self, waiting: Mapping[str, Shape]) -> None:
        """``waiting``: what each waiting piece of work (named) asks for. At most every ``poll_s``."""
        now = time.monotonic()
        if now - self.last < min(self.poll, self.limit / 2) or not waiting:
            return
        self.last = now
        nodes = alive_nodes()
        stuck = {}
        for name, shape in waiting.items():
            key = tuple(sorted((k, float(v)) for k, v in shape.items() if v > 0))
            if any(fits(shape, n) for n in nodes):
                self.since.pop(key, None)
            else:
                stuck[key] = (name, shape)
                self.since.setdefault(key, now)
        for key in [k for k in self.since if k not in stuck]:
            del self.since[key]
        for key, (name, shape) in stuck.items():
            if now - self.since[key] >= self.limit:
                have = sorted({describe(n) for n in nodes}) or ["none alive"]
                raise TasksimError(f"{name} has waited {now - self.since[key]:.0f} s for {describe(shape)}: no node "
                                   f"of the cluster has it (nodes: {', '.join(have)}); the limit is "
                                   "ray.pending_timeout_s")


def get(ref: ray.ObjectRef, name: str, shape: Shape, guard: PendingGuard | None = None) -> Any:
    """``ray.get(ref)``, failing under ``guard``'s limit while ``shape`` has no node to run on."""
    guard = guard or PendingGuard()
    while True:
        ready, _ = ray.wait([ref], timeout=1.0)
        if ready:
            return ray.get(ref)
        guard.check({name: shape})
