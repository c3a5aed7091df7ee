"""The syscall handlers, grouped by concern and keyed by syscall class.

- ``cubes``: create, drop, list, describe, grant, revoke;
- ``memories``: write, read, list, update, lifecycle, history, link, fuse, pin; ``batch``: write_many;
- ``search``: search and assemble_context;
- ``observe``: stats, events, audit, snapshot, jobs, cancel;
- ``kinds``: migrate (a long operation), demotion, the activation budget, crash recovery; ``adapter_text``: an
  adapter migrated back to plaintext (its sources' text restored);
- ``related``: what links a memory;
- ``distill``, ``reevaluate`` (an adapter on a new base model), ``generate``, ``ingest``, ``consolidate``
  (compress, merge), ``rollback`` (it may rebuild an evicted cache): the other long operations
  (``memos.kernel.longops``).

A handler is ``handler(ctx: CallContext, call) -> result``; it runs inside the call's transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memos import syscalls as sc
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation
from memos.kernel.ops import batch, cubes, memories, observe, related, search
from memos.kernel.ops.consolidate import CompressOp, MergeOp
from memos.kernel.ops.distill import DistillOp
from memos.kernel.ops.generate import GenerateOp
from memos.kernel.ops.ingest import IngestOp
from memos.kernel.ops.kinds import MigrateOp
from memos.kernel.ops.reevaluate import ReevaluateOp
from memos.kernel.ops.rollback import RollbackOp

HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {
    **cubes.HANDLERS, **memories.HANDLERS, **batch.HANDLERS, **search.HANDLERS, **observe.HANDLERS,
    **related.HANDLERS,
}
LONG_OPS: dict[type[Any], LongOperation] = {
    sc.Migrate: MigrateOp(), sc.Distill: DistillOp(), sc.Generate: GenerateOp(), sc.Ingest: IngestOp(),
    sc.Compress: CompressOp(), sc.Merge: MergeOp(), sc.Rollback: RollbackOp(), sc.Reevaluate: ReevaluateOp(),
}

_missing = set(sc.SYSCALL_TYPES.values()) - set(HANDLERS) - set(LONG_OPS)
if _missing:  # a syscall added to the union without a handler: fail at import, not at the first call
    raise RuntimeError(f"syscalls without a handler: {sorted(c.__name__ for c in _missing)}")

__all__ = ["HANDLERS", "LONG_OPS", "LongOperation"]
