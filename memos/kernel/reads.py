"""Reads are counted in memory and written to SQLite in batches, so that a search is not a durable write.

What a read records: the memory's read count and last read time (``memories.reads``, ``last_read_at``), one
``access_log`` row (what ``reads: {within: ...}`` policy conditions and retention count), and the audit record of
the read-only syscall (``search``, ``read``, ``list``, ``history``, ``assemble_context``). All of it goes to a
``ReadLog`` in memory; ``Kernel.flush_reads`` (``flush_reads``) writes what is pending in one transaction. It runs:
- when a syscall ends and ``flush_interval_s`` (2 s by default) has passed since the last flush;
- every ``flush_interval_s`` from the ``KernelService``'s flusher thread (so that reads do not wait for the next
  syscall);
- before a ``snapshot`` (what policies evaluate) and at ``close``;
- inside the transaction of any change (with its audit record), at no extra commit: the audit log stays in the
  order things happened.

Meanwhile the kernel answers as if the reads were written: a ``Memory`` it returns counts the pending reads too.

What a crash (SIGKILL, power loss) can lose: the reads of the last ``flush_interval_s`` seconds or so (their
counts, access-log rows and audit records of read-only syscalls). Never a memory, a version, a grant, an event or
the audit record of a change or of a denial: those commit with their syscall, which returns only after the commit.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from memos.errors import BackendError

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.kernel.kernel import Kernel

DEFAULT_FLUSH_INTERVAL_S = 2.0


class ReadLog:
    """Reads and read-only audit records not yet written. Thread-safe."""

    def __init__(self, flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S) -> None:
        self.flush_interval_s = flush_interval_s
        self._lock = threading.Lock()
        self._reads: list[tuple[str, float, str]] = []  # (memory id, at, principal)
        self._audits: list[tuple[float, str, str, str | None, str | None, str]] = []
        self._pending: dict[str, tuple[int, float]] = {}  # memory id -> (reads not yet written, latest)
        self._last_flush = time.monotonic()

    def record(self, memory_ids: list[str], principal: str, at: float) -> None:
        with self._lock:
            for memory_id in memory_ids:
                self._reads.append((memory_id, at, principal))
                count, latest = self._pending.get(memory_id, (0, at))
                self._pending[memory_id] = (count + 1, max(latest, at))

    def audit(self, at: float, principal: str, op: str, cube: str | None, memory_id: str | None, detail: str) -> None:
        with self._lock:
            self._audits.append((at, principal, op, cube, memory_id, detail))

    def pending(self, memory_id: str) -> tuple[int, float] | None:
        """(reads of ``memory_id`` not yet written, the latest of them), or None."""
        return self._pending.get(memory_id)

    def due(self) -> bool:
        return bool(self._reads or self._audits) and time.monotonic() - self._last_flush >= self.flush_interval_s

    def take(self) -> tuple[list[tuple[str, float, str]], list[tuple[float, str, str, str | None, str | None, str]]]:
        """Everything pending, now the caller's to write (under the kernel lock, so nothing reads the counts between
        this and the write); ``restore`` gives it back if the write does not commit."""
        with self._lock:
            reads, audits = self._reads, self._audits
            self._reads, self._audits, self._pending = [], [], {}
            self._last_flush = time.monotonic()
            return reads, audits

    def restore(self, reads: list[tuple[str, float, str]],
                audits: list[tuple[float, str, str, str | None, str | None, str]]) -> None:
        with self._lock:
            self._reads[:0] = reads
            self._audits[:0] = audits
            for memory_id, at, _ in reads:
                count, latest = self._pending.get(memory_id, (0, at))
                self._pending[memory_id] = (count + 1, max(latest, at))

    def __len__(self) -> int:
        return len(self._reads) + len(self._audits)


def record_reads(ctx: CallContext, memory_ids: list[str], at: float) -> None:
    """Count reads of ``memory_ids`` by the caller (pending until the next flush)."""
    ctx.kernel.reads.record(memory_ids, ctx.principal, at)


def audit_read(ctx: CallContext, op: str, cube: str | None, memory_id: str | None = None, detail: str = "") -> None:
    """The audit record of a read-only syscall (pending until the next flush)."""
    ctx.kernel.reads.audit(ctx.kernel.clock.now(), ctx.principal, op, cube, memory_id, detail[:1000])


def join_pending_reads(ctx: CallContext) -> None:
    """Write the pending reads in the current transaction (a change's: no extra commit), so that the audit log
    keeps the order in which things happened. If the transaction rolls back they are pending again
    (``Kernel.in_transaction`` gives back what ``ctx.taken_reads`` holds)."""
    kernel = ctx.kernel
    if not len(kernel.reads):
        return
    reads, audits = kernel.reads.take()
    ctx.taken_reads.append((reads, audits))
    kernel.store.record_reads_many(reads)
    kernel.store.audit_many(audits)


def flush_reads(kernel: Kernel) -> int:
    """Write every pending read and read-only audit record in one transaction (joining the current one when
    called inside the kernel). Returns how many were written.

    Raises:
        BackendError: they could not be written; they stay pending for the next flush.
    """
    with kernel.lock:
        reads, audits = kernel.reads.take()
        if not reads and not audits:
            return 0
        try:
            with kernel.store.transaction():
                kernel.store.record_reads_many(reads)
                kernel.store.audit_many(audits)
        except BackendError:
            kernel.reads.restore(reads, audits)
            raise
        return len(reads) + len(audits)


def flush_reads_if_due(kernel: Kernel) -> None:
    if not kernel.reads.due():
        return
    try:
        flush_reads(kernel)
    except BackendError as exc:  # the syscall that triggered it succeeded; the reads stay pending
        kernel.log.error("read counters not flushed", error=exc.message, pending=len(kernel.reads))
