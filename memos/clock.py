"""Clocks. The kernel and the policy engine never read the system time directly: a clock is injected, so that
tests (and dry runs) can move time by hand and every decision is reproducible."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Protocol

from memos.types import from_epoch, to_epoch


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...


class SystemClock:
    """Wall-clock time, made strictly increasing so that versions written in one process never share an instant."""

    def __init__(self) -> None:
        self._last = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            t = time.time()
            if t <= self._last:
                t = self._last + 1e-6
            self._last = t
            return t


class ManualClock:
    """A clock that moves only when told to (tests, simulations, ``policy explain --at``)."""

    def __init__(self, start: float | datetime = 1_750_000_000.0) -> None:
        self._now = to_epoch(start) if isinstance(start, datetime) else float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        self._now += seconds
        return self._now

    def set(self, when: float | datetime) -> None:
        self._now = to_epoch(when) if isinstance(when, datetime) else float(when)

    @property
    def datetime(self) -> datetime:
        return from_epoch(self._now)
