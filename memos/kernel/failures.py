"""What the kernel does with a failed syscall: audit it (in its own transaction: the failed one rolled back), turn a
denial into a ``Denied`` event, and log the call."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from memos.errors import BackendError, MemosError, PermissionDenied
from memos.kernel import events as ev
from memos.kernel.authz import Concealed

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.kernel.kernel import Kernel


def storable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters and encodable as UTF-8 (lone surrogates escaped): what a refused call
    brought, whatever it is, can still be written to the audit log."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def record_failure(kernel: Kernel, ctx: CallContext, op: str, cube: Any, exc: MemosError) -> None:
    """Audit a failed syscall in its own transaction (joining the caller's when there is one, as ``write_many`` does
    for a refused item); denials become events."""
    store = kernel.store
    if isinstance(exc, Concealed):
        exc = exc.denial
    detail_cube = exc.details.get("cube", cube)
    cube_name = detail_cube if isinstance(detail_cube, str) else None
    memory_id = exc.details.get("memory_id")
    if isinstance(memory_id, str):
        # A failure about a memory belongs to the memory's cube: filed under the syscall's cube, it would show
        # the memory's id and state to that cube's admins, who may not read it.
        cube_name = store.memory_cube(memory_id) or cube_name
    who, what = storable(str(ctx.principal), 128), storable(op, 64)
    try:
        with store.transaction():
            store.audit(
                kernel.clock.now(), who, what, cube_name, memory_id if isinstance(memory_id, str) else None,
                exc.code, storable(exc.message, 1000),
            )
            if isinstance(exc, PermissionDenied):
                ctx.emit(ev.Denied(cube=cube_name, principal=who, op=what, right=exc.details.get("right")))
    except BackendError as audit_exc:
        kernel.log.error("audit write failed", error=str(audit_exc), op=op)


def log_call(log: Any, trace_id: str, principal: str, op: Any, cube: Any, started: float, outcome: str,
             error: str = "") -> None:
    fields = {
        "trace_id": trace_id,
        "principal": principal,
        "syscall": op,
        "cube": cube,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        "outcome": outcome,
    }
    if error:
        log.info("syscall failed", error=error, **fields)
    else:
        log.info("syscall", **fields)
