"""Samples over time of what is otherwise only a gauge: the activation disk tier against its budget, and syscall
latency. The service's background thread calls :func:`take_sample` every ``SAMPLE_EVERY_S`` seconds and records
the result as a ``sampled`` event (cube None: superusers only) when something changed since the last one, so an
idle kernel writes nothing; ``memos report`` reads them back to draw activation bytes and syscall p95 over time.

The p95 of an op is over its last ``memos.kernel.callstats.SERVER_WINDOW`` successful calls (as ``stats`` reports it),
not over the interval: an op that was not called keeps its last figure.
"""

from __future__ import annotations

from typing import Any

from memos.kernel import events as ev
from memos.kernel.budget import kept_bytes

#: Seconds between two samples (the service's flush thread takes them).
SAMPLE_EVERY_S = 60.0


def take_sample(kernel: Any) -> ev.Sampled:
    """The kernel's activation tier (current caches plus the kept caches of older versions, as the budget counts
    them) and its server-wide syscall counts and p95, now."""
    rows = kernel.store.current_of_kind("activation")
    current = sum(r.payload["size_bytes"] for r in rows if r.payload)
    counts, latency = kernel.call_stats.view(None)
    return ev.Sampled(
        cube=None, principal="system", activation_bytes=int(current + kept_bytes(kernel.store)),
        activation_limit=kernel.budgets.disk_bytes, activation_memories=len(rows),
        syscalls=dict(sorted(counts.items())), p95_ms={op: v["p95"] for op, v in sorted(latency.items())},
    )


class Sampler:
    """Records a kernel's samples as ``sampled`` events, skipping one that shows no change since the last."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S) -> None:
        self.every_s = every_s
        self._last: ev.Sampled | None = None

    def record(self, kernel: Any) -> ev.Sampled | None:
        """Take a sample and record it if anything changed since the last recorded one (new calls, or the
        activation tier or its limit moved); returns what was recorded, or None.

        Raises:
            BackendError: the event could not be written (the next sample retries).
        """
        sample = take_sample(kernel)
        last = self._last
        if last is not None and (sample.syscalls, sample.activation_bytes, sample.activation_limit) == (
                last.syscalls, last.activation_bytes, last.activation_limit):
            return None
        kernel.record_event(sample)
        self._last = sample
        return sample
