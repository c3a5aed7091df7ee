"""Long operations: syscalls that need the model host (``migrate``, ``distill``, ``generate``).

Each is an object with four steps, run by ``run_long``:

- ``plan(ctx, call)`` in a transaction, holding the kernel: checks, journal rows; returns the plan;
- ``work(ctx, call, plan, job)`` with the kernel released: the model host builds, trains or generates (``job``,
  when ``job_args(plan)`` asked for one, takes its progress and carries a cancellation);
- ``commit(ctx, call, plan, outcome)`` in a transaction: the new versions, or nothing;
- ``abort(ctx, plan)`` in a transaction when work or commit failed: undoes the plan (journal rows, files).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from memos.errors import BackendError, Cancelled, MemosError, ModelUnavailable
from memos.kernel import events as ev

if TYPE_CHECKING:
    from pydantic import BaseModel

    from memos.kernel.context import CallContext
    from memos.kernel.jobs import RunningJob
    from memos.kernel.kernel import Kernel
    from memos.models.port import ModelPort
    from memos.types import Job


class LongOperation(ABC):
    """The steps of a long operation; subclasses implement them (see the module docstring)."""

    @abstractmethod
    def plan(self, ctx: CallContext, call: Any) -> Any: ...

    def job_args(self, plan: Any) -> dict[str, Any] | None:
        """The job's fields (``JobTable.start``) when the work is worth following as a job, else None."""
        return None

    @abstractmethod
    def work(self, ctx: CallContext, call: Any, plan: Any, job: RunningJob | None) -> Any: ...

    @abstractmethod
    def commit(self, ctx: CallContext, call: Any, plan: Any, outcome: Any) -> Any: ...

    @abstractmethod
    def abort(self, ctx: CallContext, plan: Any) -> None: ...


def require_model(ctx: CallContext, what: str) -> ModelPort:
    if ctx.kernel.model is None:
        raise ModelUnavailable(
            f"{what} needs a model host and this kernel was opened without one (Settings(model=None) or "
            "MEMOS_MODEL=none): open it with a model; the default, smollm2, is used when model is left unset"
        )
    return ctx.kernel.model


def run_long(kernel: Kernel, ctx: CallContext, op: LongOperation, call: Any) -> BaseModel:
    """plan (transaction) -> work (model host, kernel released) -> commit (transaction); abort undoes the plan.

    Work worth following (a plan whose ``job_args`` says so) runs as a job: ``jobs`` shows its progress and
    ``cancel`` stops it (``memos.kernel.jobs``)."""
    plan = kernel.in_transaction(ctx, lambda: op.plan(ctx, call))
    job_args = op.job_args(plan)
    job = kernel.jobs.start(call.op, ctx.principal, **job_args) if job_args is not None else None
    try:
        try:
            outcome = op.work(ctx, call, plan, job)
        except MemosError:
            kernel.in_transaction(ctx, lambda: op.abort(ctx, plan))
            raise
        except Exception as exc:  # noqa: BLE001 -- the model host is a backend: translate its failures once, here
            kernel.in_transaction(ctx, lambda: op.abort(ctx, plan))
            raise BackendError(f"model host failed during {call.op}: {exc}", op=call.op) from exc
        try:
            result = kernel.in_transaction(ctx, lambda: op.commit(ctx, call, plan, outcome))
        except MemosError:
            kernel.in_transaction(ctx, lambda: op.abort(ctx, plan))
            raise
    except MemosError as exc:
        if job is not None:
            job.end("cancelled" if isinstance(exc, Cancelled) else "failed", f"{exc.code}: {exc.message}")
            if job_args.get("rule") is None:  # a policy's failed action is reported by the scheduler's report
                _report_failed_job(kernel, job.snapshot(), exc)
        raise
    if job is not None:
        job.end("done")
    return result


def _report_failed_job(kernel: Kernel, job: Job, exc: MemosError) -> None:
    try:
        kernel.record_event(ev.JobFailed(
            cube=job.cubes[0] if job.cubes else None, memory_id=job.target or next(iter(job.memory_ids), None),
            principal=job.principal, job=job.id, op=job.op, code=exc.code, message=exc.message[:500],
            memories=list(job.memory_ids),
        ))
    except MemosError as event_exc:  # the operation's own error is what the caller must see
        kernel.log.error("could not record job_failed", job=job.id, error=event_exc.message)
