"""The per-call state of one syscall: ``CallContext``.

``Kernel.execute`` makes one ``CallContext`` per call and passes it to the handler (and through the handler to the
helpers in ``authz``, ``versions`` and ``ops``). It holds what the call accumulates before its transaction
commits -- work to do only after the commit (deleting a payload file), events to tell the observers about -- and
what ``execute`` prepared before taking the kernel (the query's embedding, a hybrid search's lexical candidates),
and the pending reads its transaction wrote (given back if it rolls back). Nothing per-call lives on the kernel or
in thread-local storage: a handler sees exactly the state it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memos.kernel.events import KernelEvent, type_of
from memos.kernel.reads import join_pending_reads

if TYPE_CHECKING:
    from memos.kernel.kernel import Kernel
    from memos.kernel.ops.search import LexicalLeg

class CallContext:
    """What one syscall (or one internal operation: a recorded event, start-up recovery) may read and accumulate.

    ``principal`` is who the call runs as; ``kernel`` the kernel that runs it (its store, index, clock, model).
    """

    __slots__ = ("after_commit_work", "depth", "events", "kernel", "lexical_ready", "principal", "query_vectors",
                 "taken_reads")

    def __init__(self, kernel: Kernel, principal: str) -> None:
        self.kernel = kernel
        self.principal = principal
        self.query_vectors: dict[str, list[float]] = {}
        # A hybrid search's lexical candidates, run while its query was embedded (memos.kernel.ops.search).
        self.lexical_ready: LexicalLeg | None = None
        self.after_commit_work: list[Callable[[], None]] = []
        self.events: list[KernelEvent] = []
        self.depth = 0  # transactions of this call now open (``Kernel.in_transaction``)
        # Pending reads this call's transaction wrote (memos.kernel.reads): pending again if it rolls back.
        self.taken_reads: list[tuple[list[Any], list[Any]]] = []

    def after_commit(self, action: Callable[[], None]) -> None:
        """Queue work that must happen only once the current transaction committed (e.g. deleting a blob)."""
        self.after_commit_work.append(action)

    def emit(self, event: KernelEvent) -> None:
        """Write an event to the outbox (same transaction as the change); observers get it after the commit."""
        self.kernel.store.emit(self.kernel.clock.now(), type_of(event), event.cube, event.memory_id, event.principal,
                               event.data())
        self.events.append(event)

    def audit_ok(self, op: str, cube: str | None, memory_id: str | None = None, detail: str = "") -> None:
        """Audit a successful operation of this call's principal (same transaction as the change); earlier reads
        are audited before it (``memos.kernel.reads``)."""
        join_pending_reads(self)
        self.kernel.store.audit(self.kernel.clock.now(), self.principal, op, cube, memory_id, "ok", detail)

    def query_vector(self, query: str) -> list[float]:
        """The query's embedding: computed by ``execute`` before it took the kernel, else now."""
        ready = self.query_vectors
        return ready[query] if query in ready else self.kernel.embedder.embed([query])[0]

    def take_events(self) -> list[KernelEvent]:
        """The committed events not yet delivered; the list is emptied."""
        events, self.events = self.events, []
        return events
