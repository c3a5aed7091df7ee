"""Long operations as jobs: what runs, how far it is, and how to stop it.

``migrate`` (to activation) and ``distill`` are long operations (``memos.kernel.longops.run_long``): between their *plan* and
*commit* transactions the model host works and the kernel serves other syscalls. While the work runs it is a
:class:`RunningJob` in the kernel's :class:`JobTable`: the ``jobs`` syscall shows it (its phase, step of total,
loss, who started it and for which rule), ``cancel`` asks it to stop. The work checks :meth:`RunningJob.cancelled`
between steps (a migration between memories; a distillation forwards the request to the model host, which stops
at its next optimiser step); a cancelled job raises ``Cancelled``, which aborts it like any failure: the journal
row is rolled back, its file deleted, nothing committed.

Jobs are in-memory state of the kernel process. Ended jobs are kept (newest ``keep_ended``) so that a caller that
polls sees how a job ended; a restart forgets them, and the migration journal is what recovers a crash.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from memos.errors import Cancelled, NotFound
from memos.types import Job, from_epoch


class RunningJob:
    """The kernel's handle on one job (thread-safe). The work updates it; ``jobs`` reads snapshots of it."""

    def __init__(self, table: JobTable, job: Job) -> None:
        self._table = table
        self._job = job
        self._cancel = threading.Event()

    @property
    def id(self) -> str:
        return self._job.id

    def snapshot(self) -> Job:
        with self._table._lock:
            return self._job

    def progress(self, step: int, total: int, *, phase: str | None = None, loss: float | None = None) -> None:
        changes: dict[str, Any] = {"step": step, "total": total, "updated_at": self._table._now()}
        if phase is not None:
            changes["phase"] = phase
        if loss is not None:
            changes["loss"] = loss
        self._set(**changes)

    def request_cancel(self, principal: str) -> None:
        self._set(cancel_requested_by=principal)
        self._cancel.set()

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def wait_cancel(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` seconds, waking at once when cancellation is requested; True if it was."""
        return self._cancel.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raises Cancelled when cancellation was requested (the work calls this between its steps)."""
        if self._cancel.is_set():
            job = self.snapshot()
            raise Cancelled(f"job {job.id} ({job.op}) was cancelled by {job.cancel_requested_by}", job_id=job.id,
                            by=job.cancel_requested_by)

    def end(self, state: str, error: str | None = None) -> None:
        now = self._table._now()
        self._set(state=state, error=error, ended_at=now, updated_at=now)
        self._table._ended(self)

    def _set(self, **changes: Any) -> None:
        with self._table._lock:
            self._job = self._job.model_copy(update=changes)


class JobTable:
    """The jobs of one kernel process. Thread-safe; never held together with the kernel's lock for long."""

    def __init__(self, now: Callable[[], float], *, keep_ended: int = 50) -> None:
        self._clock = now
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, RunningJob] = OrderedDict()
        self._keep_ended = keep_ended

    def _now(self) -> Any:
        return from_epoch(self._clock())

    def start(self, op: str, principal: str, cubes: Iterable[str], memory_ids: Iterable[str], *, total: int = 0,
              phase: str = "", target: str | None = None, rule: str | None = None) -> RunningJob:
        now = self._now()
        job = Job(id=f"job_{uuid.uuid4().hex[:16]}", op=op, principal=principal, cubes=tuple(dict.fromkeys(cubes)),
                  memory_ids=tuple(memory_ids), target=target, rule=rule, phase=phase, total=total,
                  started_at=now, updated_at=now)
        handle = RunningJob(self, job)
        with self._lock:
            self._jobs[job.id] = handle
        return handle

    def get(self, job_id: str) -> RunningJob:
        """Raises NotFound for an unknown job (never started here, or ended long ago)."""
        with self._lock:
            handle = self._jobs.get(job_id)
        if handle is None:
            raise NotFound(f"no job {job_id} (jobs are kept while they run and for the last "
                           f"{self._keep_ended} that ended, in this kernel process)", job_id=job_id)
        return handle

    def all(self) -> list[Job]:
        """Every job known, oldest first."""
        with self._lock:
            handles = list(self._jobs.values())
        return [h.snapshot() for h in handles]

    def running(self) -> int:
        return sum(1 for job in self.all() if job.state == "running")

    def _ended(self, handle: RunningJob) -> None:
        with self._lock:
            ended = [k for k, h in self._jobs.items() if h._job.state != "running"]
            for key in ended[: max(0, len(ended) - self._keep_ended)]:
                del self._jobs[key]
