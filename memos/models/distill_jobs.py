"""Distillations as background jobs on the model host: start one, poll its progress, cancel it.

A distillation takes minutes; the kernel must keep serving meanwhile. :class:`DistillJobs` runs each job in its own
thread; the job holds the model service's lock only while it copies the shared model (``lora.distill``'s ``lock``),
so generation and KV building go on during training (they share the CPU, not the model). Everything that crosses
the port is plain data (:class:`DistillStatus`), so the same calls work over Ray, where a callback or an Event could
not travel: the caller polls :meth:`DistillJobs.status` and calls :meth:`DistillJobs.cancel`.

A finished job has written its adapter with ``save_adapter`` to the path the kernel named (atomically: a cancelled
or failed job leaves nothing there) and keeps its :class:`~memos.types.PayloadRef` and evaluation in its status.
Finished jobs are kept until :meth:`DistillJobs.forget` (the kernel records the result, then forgets the job).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from memos.cubes.parametric import save_adapter
from memos.errors import CapacityExceeded, InvalidSyscall, MemosError, NotFound
from memos.models.distill import DistillProgress, DistillResult, LoraConfig, SourceFact, distill
from memos.models.port import DistillStatus
from memos.models.reevaluate import reevaluate
from memos.types import PayloadRef

__all__ = ["DistillJobs", "DistillStatus"]

class DistillJobs:
    """Background distillations on one model (see the module docstring). Thread-safe.

    Args:
        model: the ``ModelHost`` (or ``LoadedModel``) to distil for.
        lock: the lock that serialises the model's users (``ModelService``'s).
        max_running: jobs that may train at once; training is CPU-bound, so more than one only slows each down.
    """

    def __init__(self, model: Any, lock: AbstractContextManager[Any], *, max_running: int = 1) -> None:
        self._model = model
        self._model_lock = lock
        self._max_running = max_running
        self._jobs: dict[str, tuple[DistillStatus, threading.Event]] = {}
        self._lock = threading.Lock()

    def start(self, facts: Sequence[SourceFact], path: str, config: LoraConfig | None = None) -> DistillStatus:
        """Start distilling ``facts`` into an adapter to be written at ``path``; return its first status.

        Raises:
            CapacityExceeded: ``max_running`` jobs are running already.
            InvalidSyscall: as ``lora.distill`` (checked before the job starts: no facts, duplicates).
        """
        if not facts:
            raise InvalidSyscall("distill needs at least one memory")
        facts = list(facts)
        return self._launch("distill", path, lambda progress, cancel: distill(
            self._model, facts, config, progress=progress, cancel=cancel, lock=self._model_lock))

    def start_reevaluate(self, facts: Sequence[SourceFact], adapter: PayloadRef, path: str) -> DistillStatus:
        """Start re-evaluating the adapter ``adapter`` (trained for another base model) on this model with the
        questions of ``facts``; when done, the adapter re-stamped for this model is at ``path``
        (``memos.models.reevaluate``). A job like a distillation's: same status, cancel, forget, and cap.

        Raises:
            CapacityExceeded: ``max_running`` jobs are running already. InvalidSyscall: no facts.
        """
        if not facts:
            raise InvalidSyscall("re-evaluation needs at least one source memory to ask about")
        facts = list(facts)
        return self._launch("reevaluate", path, lambda progress, cancel: reevaluate(
            self._model, facts, adapter, progress=progress, cancel=cancel, lock=self._model_lock))

    def _launch(self, kind: str, path: str,
                work: Callable[[Callable[[DistillProgress], None], threading.Event], DistillResult]) -> DistillStatus:
        with self._lock:
            running = sum(1 for status, _ in self._jobs.values() if status.state == "running")
            if running >= self._max_running:
                raise CapacityExceeded(f"{running} distillation(s) running; at most {self._max_running} at once",
                                       running=running)
            job_id = f"{kind}-{uuid.uuid4().hex[:12]}"
            status = DistillStatus(job_id=job_id, state="running", phase="evaluate" if kind == "reevaluate" else "train")
            cancel = threading.Event()
            self._jobs[job_id] = (status, cancel)
        thread = threading.Thread(target=self._run, args=(job_id, work, path, cancel), name=job_id, daemon=True)
        thread.start()
        return status

    def running(self) -> int:
        """Jobs training or evaluating now."""
        with self._lock:
            return sum(1 for status, _ in self._jobs.values() if status.state == "running")

    def status(self, job_id: str) -> DistillStatus:
        """The job's current status.

        Raises:
            NotFound: no such job (never started, or forgotten).
        """
        with self._lock:
            if job_id not in self._jobs:
                raise NotFound(f"no distillation job {job_id}", job_id=job_id)
            return self._jobs[job_id][0]

    def cancel(self, job_id: str) -> DistillStatus:
        """Ask the job to stop at its next step (a finished job is unaffected); return its status.

        Raises:
            NotFound: no such job.
        """
        with self._lock:
            if job_id not in self._jobs:
                raise NotFound(f"no distillation job {job_id}", job_id=job_id)
            status, cancel = self._jobs[job_id]
            cancel.set()
            return status

    def forget(self, job_id: str) -> None:
        """Drop a finished job's status (a running job is cancelled first)."""
        with self._lock:
            entry = self._jobs.pop(job_id, None)
        if entry is not None:
            entry[1].set()

    def _update(self, job_id: str, **changes: Any) -> None:
        with self._lock:
            if job_id in self._jobs:
                status, cancel = self._jobs[job_id]
                self._jobs[job_id] = (status.model_copy(update=changes), cancel)

    def _run(self, job_id: str, work: Callable[[Callable[[DistillProgress], None], threading.Event], DistillResult],
             path: str, cancel: threading.Event) -> None:
        def progress(p: DistillProgress) -> None:
            self._update(job_id, phase=p.phase, step=p.step, total=p.total,
                         **({"loss": p.loss} if p.loss is not None else {}))

        try:
            result = work(progress, cancel)
            if result.cancelled or result.payload is None:
                self._update(job_id, state="cancelled", steps=result.steps_done)
                return
            ref = save_adapter(result.payload, path)
            evaluation = result.evaluation.model_dump(mode="json") if result.evaluation else None
            self._update(job_id, state="done", payload=ref, fingerprint=result.payload.info.fingerprint,
                         evaluation=evaluation, steps=result.steps_done, loss_curve=tuple(result.loss_curve))
        except MemosError as exc:
            self._update(job_id, state="failed", error=exc.to_wire())
        except Exception as exc:  # noqa: BLE001 -- a job thread must always end in a state the kernel can read
            self._update(job_id, state="failed",
                         error={"code": "backend", "message": f"{job_id.split('-')[0]} failed: {exc!r}", "details": {}})
