"""Turns for distillation: a queue in front of the model host's training slots, fair between principals.

Training an adapter takes the model host's CPU (or GPU) for minutes, and the host trains one at a time. Without a
queue the second caller was refused (``CapacityExceeded``) for as long as the first trained, so one key holder
could keep everybody else out. Now:

- a distillation waits for a slot (its job shows phase ``queued``; ``cancel`` takes it out of the queue);
- when a slot frees, the waiting principal served least recently goes next (round robin between principals,
  first come first served within one): a principal with many jobs queued gets every other turn, not all of them;
- a principal may have at most ``per_principal`` distillations waiting; one more is refused with
  ``CapacityExceeded`` naming only that principal's own jobs;
- how long one job may hold a slot is bounded by the kernel (``Kernel.distill_max_steps`` for the steps a caller
  may ask for, ``Kernel.distill_max_s`` for the time a job trains: a job past it is cancelled).

The queue lives in the kernel process, like the jobs table: a restart forgets waiting jobs (their callers get an
error and retry), which commits nothing.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from memos.errors import CapacityExceeded

if TYPE_CHECKING:
    from memos.kernel.jobs import RunningJob


class DistillQueue:
    """``slots`` distillations train at once; the others wait their turn (see the module docstring). Thread-safe."""

    def __init__(self, slots: int = 1, per_principal: int = 4, poll_s: float = 0.05) -> None:
        self.slots = slots
        self.per_principal = per_principal
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: list[tuple[int, str]] = []  # (ticket, principal) in arrival order
        self._served: dict[str, int] = {}  # principal -> the turn it last got
        self._tickets = itertools.count()
        self._turns = itertools.count(1)

    def waiting(self, principal: str | None = None) -> int:
        with self._cond:
            return sum(1 for _, who in self._waiting if principal is None or who == principal)

    def _next(self) -> int | None:
        """The ticket whose turn it is: the head of the principal served least recently."""
        heads: dict[str, int] = {}
        for ticket, who in self._waiting:
            heads.setdefault(who, ticket)
        if not heads:
            return None
        who = min(heads, key=lambda p: (self._served.get(p, 0), heads[p]))
        return heads[who]

    @contextmanager
    def turn(self, principal: str, job: RunningJob | None) -> Iterator[None]:
        """Wait for a slot, hold it for the ``with`` block, give it back.

        Raises:
            CapacityExceeded: ``principal`` has ``per_principal`` distillations waiting already.
            Cancelled: the job was cancelled while it waited.
        """
        with self._cond:
            mine = sum(1 for _, who in self._waiting if who == principal)
            if mine >= self.per_principal:
                raise CapacityExceeded(
                    f"{principal} has {mine} distillation(s) waiting already; at most {self.per_principal} may wait "
                    "per principal (cancel one, or wait for them)", waiting=mine, limit=self.per_principal,
                )
            ticket = next(self._tickets)
            self._waiting.append((ticket, principal))
            try:
                while not (self._running < self.slots and self._next() == ticket):
                    if job is not None:
                        job.raise_if_cancelled()
                    self._cond.wait(self._poll_s)
            except BaseException:
                self._waiting.remove((ticket, principal))
                self._cond.notify_all()
                raise
            self._waiting.remove((ticket, principal))
            self._served[principal] = next(self._turns)
            self._running += 1
        try:
            if job is not None:
                job.progress(0, 0, phase="train")
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
