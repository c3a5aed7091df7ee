"""Syscall counts and latencies, server-wide and per cube: what ``stats`` reports, to whom.

Superusers (``system`` and the configured admins) get the server-wide figures: every successful syscall since the
kernel process started, and p50/p95 of each op's last 256 calls. Any other principal gets the figures of the cubes
it may read: the syscalls that named one of those cubes (``cube`` or ``name``) or returned a memory of it, and
p50/p95 of each op's last 64 such calls per cube (taken over the readable cubes together). Calls that name no cube
(``stats``, ``events`` without cubes, a search over several cubes) count only server-wide. A dropped cube's figures
go with it, so a re-created name starts at zero (its incarnation, ``memos.storage.sqlite``).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict, deque
from collections.abc import Iterable

SERVER_WINDOW = 256
CUBE_WINDOW = 64


def latency_summary(latencies: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """op -> {p50, p95} in milliseconds."""
    out = {}
    for op, window in latencies.items():
        values = sorted(window)
        if values:
            out[op] = {
                "p50": round(values[len(values) // 2] * 1000, 3),
                "p95": round(values[min(len(values) - 1, int(len(values) * 0.95))] * 1000, 3),
            }
    return out


class CallStats:
    """Thread-safe counters of successful syscalls (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._latencies: dict[str, deque[float]] = {}
        self._cube_counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._cube_latencies: dict[tuple[str, str], deque[float]] = {}

    def record(self, op: str, cube: str | None, seconds: float) -> None:
        with self._lock:
            self.counts[op] += 1
            self._latencies.setdefault(op, deque(maxlen=SERVER_WINDOW)).append(seconds)
            if cube is not None:
                self._cube_counts[cube][op] += 1
                self._cube_latencies.setdefault((cube, op), deque(maxlen=CUBE_WINDOW)).append(seconds)

    def forget_cube(self, cube: str) -> None:
        with self._lock:
            self._cube_counts.pop(cube, None)
            for key in [k for k in self._cube_latencies if k[0] == cube]:
                del self._cube_latencies[key]

    def view(self, cubes: Iterable[str] | None) -> tuple[dict[str, int], dict[str, dict[str, float]]]:
        """(op -> count, op -> {p50, p95}): server-wide when ``cubes`` is None, else over those cubes."""
        with self._lock:
            if cubes is None:
                return dict(self.counts), latency_summary({op: list(w) for op, w in self._latencies.items()})
            wanted = set(cubes)
            counts: Counter[str] = Counter()
            for cube in wanted:
                counts.update(self._cube_counts.get(cube, Counter()))
            windows: defaultdict[str, list[float]] = defaultdict(list)
            for (cube, op), window in self._cube_latencies.items():
                if cube in wanted:
                    windows[op].extend(window)
        return dict(counts), latency_summary(windows)
