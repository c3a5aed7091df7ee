"""Observers: how the kernel reports to the outside (metrics, live views) without importing any of it.

An observer sees every syscall's outcome and latency, every kernel event after its transaction committed (events
of a rolled-back syscall are never delivered), and every evaluation of a lifecycle policy (told by whoever hosts
the policy scheduler, e.g. ``KernelService``, whether or not it planned anything). ``Kernel.deliver`` is the one
place that calls them. The Ray metrics exporter
(memos.hosting.metrics) is one. Observers must be fast and must not raise; an observer that raises is logged and
the syscall still succeeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from memos.kernel.events import KernelEvent


class KernelObserver(Protocol):
    def syscall(self, op: str, outcome: str, duration_s: float) -> None:
        """``outcome`` is ``ok`` or an error code (``denied``, ``conflict``, ...)."""
        ...

    def event(self, event: KernelEvent) -> None:
        """One committed event (``memos.kernel.events``: a frozen type per kind, read by attribute)."""
        ...

    def policy_run(self, policy: str, duration_s: float, outcomes: Mapping[str, int]) -> None:
        """One evaluation of ``policy``; ``outcomes`` counts its actions by outcome (``ok``, ``not_executed`` or an
        error code), empty when it planned nothing."""
        ...
