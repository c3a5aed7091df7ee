"""The kernel: one synchronous, deterministic entry point, ``Kernel.execute(principal, syscall)``.

Contract of ``execute``:
- the principal is checked against the cube's grants before anything is read or written; a denial raises
  ``PermissionDenied`` naming the cube and the missing right, and is written to the audit log;
- a memory addressed by id in a cube the principal cannot read at all is reported ``NotFound`` (its existence is
  not revealed); the audit log still records the denial;
- each syscall runs in one SQLite transaction and returns only after it committed (then the vector index is
  brought up to date from the outbox);
- every change is a new immutable version with provenance; nothing is overwritten;
- errors are ``MemosError`` subclasses; the kernel keeps serving after any of them.

Time comes from the injected clock and ids from the injected factory, so tests are reproducible.

The kernel is thread-safe: a syscall holds the kernel lock for its transaction(s); long operations (``migrate``,
``distill``, ``generate``) release it while the model host works, so other syscalls proceed meanwhile.

Where things live: this module runs calls (transactions, dispatch, failure audit, observers); each syscall's
handler is in ``memos.kernel.ops`` (keyed by syscall class); per-call state is a ``CallContext``
(``memos.kernel.context``); rights checks are in ``memos.kernel.authz``; writing versions in
``memos.kernel.versions``; running long operations in ``memos.kernel.longops``; auditing failures in
``memos.kernel.failures``; events are typed in ``memos.kernel.events``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from memos import syscalls as sc
from memos.clock import Clock, SystemClock
from memos.errors import BackendError, InvalidSyscall, MemosError
from memos.kernel import events as ev
from memos.kernel.authz import DEFAULT_SUPERUSERS
from memos.kernel.callstats import CallStats
from memos.kernel.context import CallContext
from memos.kernel.distill_queue import DistillQueue
from memos.kernel.failures import log_call, record_failure
from memos.kernel.indexer import Indexer
from memos.kernel.jobs import JobTable
from memos.kernel.longops import run_long
from memos.kernel.observe import KernelObserver
from memos.kernel.ops import HANDLERS, LONG_OPS
from memos.kernel.ops.kinds import ActivationBudget, recover_migrations
from memos.kernel.ops.search import LexicalLeg, lexical_ahead, run_lexical_leg
from memos.kernel.reads import ReadLog, flush_reads, flush_reads_if_due
from memos.kernel.versions import new_memory_id
from memos.logging import get_logger
from memos.models.llm import LanguageModel
from memos.models.port import ModelPort
from memos.storage.owner import HomeLock
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import Embedder, VectorIndex
from memos.types import PRINCIPAL_RE


def _query_of(call: Any) -> str | None:
    """The text a searching syscall embeds (embedding is the slow part of a search: done before taking the kernel)."""
    if (call.op == "search" and call.mode != "lexical") or call.op == "assemble_context":
        return call.query
    if call.op == "generate" and call.cubes and not call.memory:
        users = [m.content for m in call.messages if m.role == "user"]
        return users[-1][:4096] if users else None
    return None


def _outcome(ahead: Future[LexicalLeg] | None) -> LexicalLeg | None:
    """The leg run ahead, or None if none was or it failed: the handler then runs it itself and reports its
    error as usual."""
    if ahead is None:
        return None
    try:
        return ahead.result()
    except Exception:  # noqa: BLE001 - reported by the handler's own run of the leg
        return None


class Kernel:
    """Owns the store, the vector index, the embedder and (optionally) a model host port; executes syscalls."""

    def __init__(
        self,
        store: SqliteStore,
        index: VectorIndex,
        embedder: Embedder,
        *,
        clock: Clock | None = None,
        new_id: Callable[[], str] = new_memory_id,
        superusers: Iterable[str] = DEFAULT_SUPERUSERS,
        model: ModelPort | None = None,
        blob_dir: str | Path | None = None,
        budgets: ActivationBudget | None = None,
        read_flush_s: float | None = None,
        llm: LanguageModel | None = None,
    ) -> None:
        self.store = store
        self.home_lock: HomeLock | None = None  # set by open_kernel, which took it before opening the store
        self.model = model
        self.llm = llm  # the language model for memory work (ingest); the composition root chooses the backend
        self.blob_dir = Path(blob_dir) if blob_dir is not None else store.path.parent / "blobs"
        self.budgets = budgets or ActivationBudget()
        self.index = index
        self.embedder = embedder
        self.clock = clock or SystemClock()
        self.new_id = new_id
        self.superusers = frozenset(superusers)
        self.reads = ReadLog() if read_flush_s is None else ReadLog(read_flush_s)  # memos.kernel.reads
        self.call_stats = CallStats()  # what ``stats`` reports, server-wide and per cube
        self.observers: list[KernelObserver] = []
        self.log = get_logger("memos.kernel")
        # One syscall at a time holds the kernel; long operations (model work) release it between their phases, and
        # index updates (embedding) run after it is released (memos.kernel.indexer, "Locking").
        self.lock = threading.RLock()
        self._workers: ThreadPoolExecutor | None = None  # lexical legs run ahead (_lexical_ahead), made on first use
        self.lexical_ahead = True  # False: both legs in the handler, one after the other (the benchmark's baseline)
        self._workers_lock = threading.Lock()
        self.closing = threading.Event()  # set by close: background passes (re-evaluations) stop between items
        self.indexer = Indexer(store, index, embedder, store_lock=self.lock)
        self.jobs = JobTable(self.clock.now)
        self.job_poll_s = 0.25  # how often a long operation polls the model host for progress
        # Distillation: turns between principals, and how much of the trainer one job may take (distill_queue).
        self.distill_queue = DistillQueue()
        self.distill_max_steps = 1000
        self.distill_max_s = 3 * 3600.0
        self._start()
        recover_migrations(self, CallContext(self, "system"))

    def _start(self) -> None:
        """Start-up check: the index must have been built by the same embedder; then replay and reconcile."""
        previous = self.store.get_meta("embedder")
        if previous is not None and previous != self.embedder.name:
            self.log.warning("embedder changed; rebuilding the vector index", previous=previous, now=self.embedder.name)
            self.index.delete(sorted(self.index.ids()))
        with self.store.transaction():
            self.store.set_meta("embedder", self.embedder.name)
        report = self.indexer.reconcile()
        if not report.consistent:
            self.log.warning("vector index reconciled at start", added=report.added, removed=report.removed)

    def _lexical_ahead(self, call: Any) -> Future[LexicalLeg] | None:
        """Start ``call``'s lexical leg on a worker thread (a hybrid search's: ``lexical_ahead``), so that it runs
        while the caller's thread embeds the query: the search waits for the longer of the two, not their sum
        (torch and SQLite release the GIL). It reads through the store outside the kernel, before the call's
        transaction; the handler uses it only if nothing was written since (``SqliteStore.changes``), else runs
        the leg again: the hits are those of running both legs in the call's transaction."""
        key = lexical_ahead(call)
        if key is None or not self.lexical_ahead or self.store.held_here():  # a call made inside a transaction: the worker would wait for it
            return None
        with self._workers_lock:
            if self._workers is None:
                self._workers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="memos-lexical")
            return self._workers.submit(run_lexical_leg, self.store, key)

    def close(self) -> None:
        self.closing.set()
        with self._workers_lock:
            if self._workers is not None:  # a leg still running reads the store: let it end before the close
                self._workers.shutdown(wait=True)
                self._workers = None
        try:
            self.flush_reads()
            self.index.close()
            self.store.close()
        finally:
            if self.home_lock is not None:  # memos.storage.owner: the data dir is free for the next owner
                self.home_lock.release()

    # -------------------------------------------------------------------------------------------------- entry

    def execute(self, principal: str, syscall: Any, *, trace_id: str | None = None) -> BaseModel:
        """Run one syscall as ``principal``. ``syscall`` is a syscall object or its wire dict.

        Raises:
            MemosError: the typed error of the failure (see memos.errors); nothing was changed.
        """
        started = time.perf_counter()
        trace_id = trace_id or uuid.uuid4().hex[:16]
        op = syscall.get("op") if isinstance(syscall, dict) else getattr(syscall, "op", None)
        cube = None
        ctx = CallContext(self, principal)
        try:
            if not isinstance(principal, str) or not (PRINCIPAL_RE.match(principal)):
                raise InvalidSyscall(f"invalid principal {principal!r}")
            call = sc.parse_syscall(syscall)
            op = call.op
            query = _query_of(call)
            if query:
                ahead = self._lexical_ahead(call)
                ctx.query_vectors[query] = self.embedder.embed([query])[0]
                ctx.lexical_ready = _outcome(ahead)
            cube = getattr(call, "cube", None) or getattr(call, "name", None)
            long_op = LONG_OPS.get(type(call))
            if long_op is not None:
                result = run_long(self, ctx, long_op, call)
            else:
                handler = HANDLERS[type(call)]
                result = self.in_transaction(ctx, lambda: handler(ctx, call))
        except MemosError as exc:
            with self.lock:
                self.record_failure(ctx, str(op), cube, exc)
            log_call(self.log, trace_id, principal, op, cube, started, exc.code, exc.message)
            self.deliver(ctx.take_events(), syscall=(str(op), exc.code, time.perf_counter() - started))
            raise
        where = cube if isinstance(cube, str) else getattr(result, "cube", None)
        self.call_stats.record(op, where if isinstance(where, str) else None, time.perf_counter() - started)
        log_call(self.log, trace_id, principal, op, cube, started, "ok")
        self.deliver(ctx.take_events(), syscall=(op, "ok", time.perf_counter() - started))
        flush_reads_if_due(self)
        return result

    def in_transaction(self, ctx: CallContext, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` holding the kernel, in one SQLite transaction; then run the after-commit work ``ctx``
        collected (files to delete, index updates). On an exception nothing is committed, and the after-commit work
        and the pending events are dropped."""
        outermost = ctx.depth == 0
        with self.lock:
            queued_before = self.store.outbox_writes
            ctx.depth += 1
            ctx.after_commit_work = []
            if outermost:
                ctx.taken_reads = []
            try:
                with self.store.transaction():
                    result = fn()
            except BaseException:
                ctx.after_commit_work = []
                if outermost:
                    for reads, audits in ctx.taken_reads:  # rolled back with the change: pending again
                        self.reads.restore(reads, audits)
                ctx.events.clear()
                ctx.depth -= 1
                raise
            for action in ctx.after_commit_work:
                action()
            ctx.after_commit_work = []
            ctx.depth -= 1
            queued = self.store.outbox_writes != queued_before
        if not outermost or not queued:  # nested: the outermost call flushes; a read has nothing to wait for
            return result
        # Outside the kernel: concurrent writers' entries are embedded in one batch. The syscall still returns only
        # after its own entries are indexed (read-your-writes), or after the failure was logged (the outbox keeps it).
        self._flush_index()
        return result

    def deliver(
        self, events: Iterable[ev.KernelEvent] = (), *, syscall: tuple[str, str, float] | None = None,
        policy_run: tuple[str, float, Mapping[str, int]] | None = None,
    ) -> None:
        """The one way to tell the observers (``memos.kernel.observe``) something: events that committed, a
        syscall's (op, outcome, seconds), a policy evaluation's (policy, seconds, outcomes). An observer's failure
        never fails the caller."""
        if not self.observers:
            return
        events = list(events)
        for observer in list(self.observers):
            try:
                if syscall is not None:
                    observer.syscall(syscall[0][:64], syscall[1], syscall[2])
                if policy_run is not None:
                    observer.policy_run(*policy_run)
                for event in events:
                    observer.event(event)
            except Exception as exc:  # noqa: BLE001 -- an observer is outside the kernel's contract: report, never propagate
                self.log.error("kernel observer failed", observer=type(observer).__name__, error=repr(exc))

    def flush_reads(self) -> int:
        """Write the pending reads now (``memos.kernel.reads.flush_reads``). Returns how many were written."""
        return flush_reads(self)

    def execute_batch(self, principal: str, syscalls: list[Any]) -> list[BaseModel | MemosError]:
        """Run several syscalls in order, each in its own transaction; failures are returned in place, not raised."""
        if len(syscalls) > sc.MAX_BATCH:
            raise InvalidSyscall(f"a batch holds at most {sc.MAX_BATCH} syscalls, got {len(syscalls)}")
        out: list[BaseModel | MemosError] = []
        for call in syscalls:
            try:
                out.append(self.execute(principal, call))
            except MemosError as exc:
                out.append(exc)
        return out

    def record_event(self, event: ev.KernelEvent) -> None:
        """Record an event that no syscall made (a policy evaluation, a failed policy action) in the outbox, in its
        own transaction, and tell the observers once it committed. ``cube`` decides who sees it: the readers of that
        cube, or superusers only when it is None.

        Raises:
            BackendError: the event could not be written (nothing was recorded).
        """
        ctx = CallContext(self, event.principal or "system")
        self.in_transaction(ctx, lambda: ctx.emit(event))
        self.deliver(ctx.take_events())

    def record_failure(self, ctx: CallContext, op: str, cube: Any, exc: MemosError) -> None:
        """Audit a failed syscall (``memos.kernel.failures.record_failure``)."""
        record_failure(self, ctx, op, cube, exc)

    def _flush_index(self) -> None:
        try:
            self.indexer.flush()
        except BackendError as exc:
            # The syscall committed: the outbox keeps the change and the next flush or start-up retries it.
            self.log.error("vector index update deferred", error=str(exc), pending=self.store.pending_index_count())
