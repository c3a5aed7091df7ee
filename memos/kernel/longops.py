"""Long operations: syscalls that need the model host (``migrate``, ``distill``, ``generate``).

Each is an object with four steps, run by ``Kernel._run_long``:

- ``plan(ctx, call)`` in a transaction, holding the kernel: checks, journal rows; returns the plan;
- ``work(ctx, call, plan, job)`` with the kernel released: the model host builds, trains or generates (``job``,
  when ``job_args(plan)`` asked for one, takes its progress and carries a cancellation);
- ``commit(ctx, call, plan, outcome)`` in a transaction: the new versions, or nothing;
- ``abort(ctx, plan)`` in a transaction when work or commit failed: undoes the plan (journal rows, files).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos.errors import ModelUnavailable

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.kernel.jobs import RunningJob
    from memos.models.port import ModelPort


class LongOperation:
    """The steps of a long operation; subclasses implement them (see the module docstring)."""

    def plan(self, ctx: CallContext, call: Any) -> Any:
        raise NotImplementedError

    def job_args(self, plan: Any) -> dict[str, Any] | None:
        """The job's fields (``JobTable.start``) when the work is worth following as a job, else None."""
        return None

    def work(self, ctx: CallContext, call: Any, plan: Any, job: RunningJob | None) -> Any:
        raise NotImplementedError

    def commit(self, ctx: CallContext, call: Any, plan: Any, outcome: Any) -> Any:
        raise NotImplementedError

    def abort(self, ctx: CallContext, plan: Any) -> None:
        raise NotImplementedError


def require_model(ctx: CallContext, what: str) -> ModelPort:
    if ctx.kernel.model is None:
        raise ModelUnavailable(
            f"{what} needs a model host and this kernel was opened without one (Settings(model=None) or "
            "MEMOS_MODEL=none): open it with a model; the default, smollm2, is used when model is left unset"
        )
    return ctx.kernel.model
