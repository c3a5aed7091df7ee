"""Kernel metrics on Ray's metrics export (Prometheus text; names get Ray's ``ray_`` prefix).

| metric | type | tags |
|---|---|---|
| memos_syscalls_total | counter | op, outcome (ok or an error code) |
| memos_syscall_latency_seconds | histogram | op |
| memos_events_total | counter | type (written, updated, migrated, evicted, denied, policy_fired, ...) |
| memos_memories | gauge | cube, kind, state (current versions) |
| memos_bytes | gauge | cube, kind |

Counters are updated by ``RayMetricsObserver`` on every syscall; gauges by ``refresh_gauges`` (the kernel actor calls
it on a timer). Only this module and the rest of memos.hosting import ray.
"""

from __future__ import annotations

from typing import Any

LATENCY_BOUNDARIES = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


class RayMetricsObserver:
    """A ``KernelObserver`` that records into ``ray.util.metrics``."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._syscalls = metrics.Counter(
            "memos_syscalls_total", description="Syscalls by op and outcome.", tag_keys=("op", "outcome")
        )
        self._latency = metrics.Histogram(
            "memos_syscall_latency_seconds", description="Syscall latency in the kernel.",
            boundaries=LATENCY_BOUNDARIES, tag_keys=("op",),
        )
        self._events = metrics.Counter("memos_events_total", description="Kernel events by type.", tag_keys=("type",))
        self._memories = metrics.Gauge(
            "memos_memories", description="Memories (current versions) by cube, kind and state.",
            tag_keys=("cube", "kind", "state"),
        )
        self._bytes = metrics.Gauge("memos_bytes", description="Bytes of current versions by cube and kind.",
                                    tag_keys=("cube", "kind"))
        self._seen: set[tuple[str, str, str]] = set()

    def syscall(self, op: str, outcome: str, duration_s: float) -> None:
        self._syscalls.inc(1, {"op": op, "outcome": outcome})
        self._latency.observe(duration_s, {"op": op})

    def event(self, type_: str, cube: str | None, data: dict[str, Any]) -> None:
        self._events.inc(1, {"type": type_})

    def refresh_gauges(self, counts: list[tuple[str, str, str, int, int]]) -> None:
        """Set the gauges from ``SqliteStore.counts`` rows; series that vanished are set to 0."""
        current: set[tuple[str, str, str]] = set()
        size: dict[tuple[str, str], int] = {}
        for cube, kind, state, n, b in counts:
            current.add((cube, kind, state))
            self._memories.set(n, {"cube": cube, "kind": kind, "state": state})
            size[(cube, kind)] = size.get((cube, kind), 0) + b
        for cube, kind, state in self._seen - current:
            self._memories.set(0, {"cube": cube, "kind": kind, "state": state})
        for (cube, kind), b in size.items():
            self._bytes.set(b, {"cube": cube, "kind": kind})
        self._seen = current
