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
``generate``) release it while the model host works, so other syscalls proceed meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from memos import syscalls as sc
from memos.clock import Clock, SystemClock
from memos.cubes.plaintext import check_content, check_metadata, content_hash
from memos.errors import (
    AlreadyExists,
    BackendError,
    Cancelled,
    InvalidState,
    InvalidSyscall,
    MemosError,
    NotFound,
    PermissionDenied,
    VersionConflict,
)
from memos.kernel import idempotency
from memos.kernel.acl import allows, effective_right
from memos.kernel.batch import BatchWriteOps
from memos.kernel.consolidate import ConsolidateOps
from memos.kernel.context import ContextOps
from memos.kernel.indexer import Indexer
from memos.kernel.ingest import IngestOps
from memos.kernel.jobs import JobTable
from memos.kernel.observe import KernelObserver
from memos.kernel.reads import ReadLog, ReadOps
from memos.kernel.retrieval import Fused, reciprocal_rank_fusion
from memos.kernel.tiering import ActivationBudget, TieringOps
from memos.logging import get_logger
from memos.models.llm import LanguageModel
from memos.models.port import ModelPort
from memos.storage.owner import HomeLock
from memos.storage.sqlite import SqliteStore, VersionRow
from memos.storage.vector import Embedder, IndexQuery, VectorIndex, parse_entry_id
from memos.types import (
    GENERATED_WEIGHT,
    PRINCIPAL_RE,
    Ack,
    AuditList,
    AuditRecord,
    CubeInfo,
    CubeList,
    Event,
    EventList,
    Grant,
    Job,
    JobList,
    KernelState,
    Memory,
    MemoryList,
    MemoryRef,
    Provenance,
    Right,
    SearchHit,
    SearchResult,
    Source,
    State,
    Stats,
    Trust,
    from_epoch,
    initial_trust,
    to_epoch,
)

DEFAULT_SUPERUSERS = frozenset({"system"})
_CANDIDATES = 50  # per retriever, at least; more for larger k


class _Concealed(NotFound):
    """A denial reported to the caller as NotFound (so a memory's existence is not revealed) but audited as the
    denial it is. Only ``memory_id`` (which the caller already named) travels in its details."""

    def __init__(self, message: str, denial: PermissionDenied, **details: Any) -> None:
        super().__init__(message, **details)
        self.denial = denial


def new_memory_id() -> str:
    return "m_" + uuid.uuid4().hex[:20]


def _storable(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters and encodable as UTF-8 (lone surrogates escaped): what a refused call
    brought, whatever it is, can still be written to the audit log."""
    return text[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def weakest(trusts: Iterable[Trust | str]) -> Trust:
    return Trust.UNTRUSTED if any(Trust(t) == Trust.UNTRUSTED for t in trusts) else Trust.TRUSTED


class Kernel(TieringOps, ContextOps, BatchWriteOps, ReadOps, IngestOps, ConsolidateOps):
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
        self.syscall_counts: Counter[str] = Counter()
        self.reads = ReadLog() if read_flush_s is None else ReadLog(read_flush_s)  # memos.kernel.reads
        self._latencies: dict[str, deque[float]] = {}
        self.observers: list[KernelObserver] = []
        self.log = get_logger("memos.kernel")
        # One syscall at a time holds the kernel; long operations (model work) release it between their phases, and
        # index updates (embedding) run after it is released (memos.kernel.indexer, "Locking").
        self._lock = threading.RLock()
        self.indexer = Indexer(store, index, embedder, store_lock=self._lock)
        self._tls = threading.local()
        self.jobs = JobTable(self.clock.now)
        self.job_poll_s = 0.25  # how often a long operation polls the model host for progress
        self._handlers: dict[str, Callable[[str, Any], BaseModel]] = {
            op: getattr(self, f"_op_{op}") for op in sc.SYSCALL_TYPES if op not in self.LONG_OPS
        }
        self._start()
        self._recover_migrations()

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

    def close(self) -> None:
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
        try:
            if not isinstance(principal, str) or not (PRINCIPAL_RE.match(principal)):
                raise InvalidSyscall(f"invalid principal {principal!r}")
            call = sc.parse_syscall(syscall)
            op = call.op
            self._embed_queries(call)
            cube = getattr(call, "cube", None) or getattr(call, "name", None)
            if op in self.LONG_OPS:
                result = self._run_long(principal, call)
            else:
                result = self.in_transaction(lambda: self._handlers[op](principal, call))
        except MemosError as exc:
            with self._lock:
                self._record_failure(principal, str(op), cube, exc)
            self._log(trace_id, principal, op, cube, started, exc.code, exc.message)
            self._notify(str(op), exc.code, started)
            raise
        with self._lock:
            self.syscall_counts[op] += 1
            self._latencies.setdefault(op, deque(maxlen=256)).append(time.perf_counter() - started)
        self._log(trace_id, principal, op, cube, started, "ok")
        self._notify(op, "ok", started)
        self._flush_reads_if_due()
        return result

    def in_transaction(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` holding the kernel, in one SQLite transaction; then run its after-commit work (files to
        delete, index updates). On an exception nothing is committed and the after-commit work is dropped."""
        outermost = not getattr(self._tls, "in_kernel", False)
        with self._lock:
            queued_before = self.store.outbox_writes
            self._tls.in_kernel = True
            self._tls.after_commit = []
            if outermost:
                self._tls.taken_reads = []
            try:
                with self.store.transaction():
                    result = fn()
            except BaseException:
                self._tls.after_commit = []
                if outermost:
                    for reads, audits in self._tls.taken_reads:  # rolled back with the change: pending again
                        self.reads.restore(reads, audits)
                self._pending_events().clear()
                self._tls.in_kernel = not outermost
                raise
            for action in self._tls.after_commit:
                action()
            self._tls.after_commit = []
            self._tls.in_kernel = not outermost
            queued = self.store.outbox_writes != queued_before
        if not outermost or not queued:  # nested: the outermost call flushes; a read has nothing to wait for
            return result
        # Outside the kernel: concurrent writers' entries are embedded in one batch. The syscall still returns only
        # after its own entries are indexed (read-your-writes), or after the failure was logged (the outbox keeps it).
        self._flush_index()
        return result

    def after_commit(self, action: Callable[[], None]) -> None:
        """Queue work that must happen only once the current transaction committed (e.g. deleting a blob)."""
        self._tls.after_commit.append(action)

    def _pending_events(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        events = getattr(self._tls, "events", None)
        if events is None:
            events = self._tls.events = []
        return events

    def _notify(self, op: str, outcome: str, started: float) -> None:
        """Tell observers what committed. An observer's failure never fails the syscall."""
        pending = self._pending_events()
        events = list(pending)
        pending.clear()
        if not self.observers:
            return
        duration = time.perf_counter() - started
        for observer in self.observers:
            try:
                observer.syscall(op[:64], outcome, duration)
                for type_, cube, data in events:
                    observer.event(type_, cube, data)
            except Exception as exc:  # an observer is outside the kernel's contract: report, never propagate
                self.log.error("kernel observer failed", observer=type(observer).__name__, error=repr(exc))

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

    def _log(self, trace_id: str, principal: str, op: Any, cube: Any, started: float, outcome: str, error: str = "") -> None:
        fields = {
            "trace_id": trace_id,
            "principal": principal,
            "syscall": op,
            "cube": cube,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "outcome": outcome,
        }
        if error:
            self.log.info("syscall failed", error=error, **fields)
        else:
            self.log.info("syscall", **fields)

    def _record_failure(self, principal: str, op: str, cube: Any, exc: MemosError) -> None:
        """Audit a failed syscall in its own transaction (the failed one rolled back); denials become events."""
        if isinstance(exc, _Concealed):
            exc = exc.denial
        detail_cube = exc.details.get("cube", cube)
        cube_name = detail_cube if isinstance(detail_cube, str) else None
        memory_id = exc.details.get("memory_id")
        if isinstance(memory_id, str):
            # A failure about a memory belongs to the memory's cube: filed under the syscall's cube, it would show
            # the memory's id and state to that cube's admins, who may not read it.
            cube_name = self.store.memory_cube(memory_id) or cube_name
        who, what = _storable(str(principal), 128), _storable(op, 64)
        try:
            with self.store.transaction():
                self.store.audit(
                    self.clock.now(), who, what, cube_name, memory_id if isinstance(memory_id, str) else None,
                    exc.code, _storable(exc.message, 1000),
                )
                if isinstance(exc, PermissionDenied):
                    self._emit("denied", cube_name, None, who, op=what, right=exc.details.get("right"))
        except BackendError as audit_exc:
            self.log.error("audit write failed", error=str(audit_exc), op=op)

    def _flush_index(self) -> None:
        try:
            self.indexer.flush()
        except BackendError as exc:
            # The syscall committed: the outbox keeps the change and the next flush or start-up retries it.
            self.log.error("vector index update deferred", error=str(exc), pending=self.store.pending_index_count())

    # -------------------------------------------------------------------------------------------------- helpers

    def _grants(self, cube: str) -> list[tuple[str, str]]:
        return self.store.grants(cube)

    def _right(self, principal: str, cube: str) -> Right | None:
        return effective_right(principal, self._grants(cube), self.superusers)

    def _require_cube(self, principal: str, cube: str, needed: Right) -> None:
        if self.store.get_cube(cube) is None:
            raise NotFound(f"cube {cube!r} does not exist", cube=cube)
        if not allows(self._right(principal, cube), needed):
            raise PermissionDenied(
                f"{principal} lacks the {needed.value!r} right on cube {cube!r}", cube=cube, right=needed.value
            )

    def _require_memory(self, principal: str, memory_id: str, needed: Right, version: int | None = None) -> VersionRow:
        row = self.store.get_version(memory_id, version)
        if row is None:
            if version is not None and self.store.get_version(memory_id) is not None:
                self._require_memory(principal, memory_id, Right.READ)
                raise NotFound(f"memory {memory_id} has no version {version}", memory_id=memory_id, version=version)
            raise NotFound(f"memory {memory_id} not found", memory_id=memory_id)
        held = self._right(principal, row.cube)
        if not allows(held, Right.READ):
            denial = PermissionDenied(
                f"{principal} lacks the {needed.value!r} right on cube {row.cube!r}",
                cube=row.cube, right=needed.value, memory_id=memory_id,
            )
            raise _Concealed(f"memory {memory_id} not found", denial, memory_id=memory_id)
        if not allows(held, needed):
            raise PermissionDenied(
                f"{principal} lacks the {needed.value!r} right on cube {row.cube!r}",
                cube=row.cube, right=needed.value, memory_id=memory_id,
            )
        return row

    def _readable_cubes(self, principal: str) -> list[str]:
        return [c[0] for c in self.store.list_cubes() if allows(self._right(principal, c[0]), Right.READ)]

    def to_memory(self, row: VersionRow) -> Memory:
        pending = self.reads.pending(row.memory_id)  # reads not yet flushed (memos.kernel.reads) count too
        last_read = max(row.last_read_at or 0.0, pending[1]) if pending else row.last_read_at
        return Memory(
            id=row.memory_id,
            cube=row.cube,
            kind=row.kind,
            version=row.version,
            state=row.state,
            pinned=row.pinned,
            content=row.content,
            metadata=row.metadata,
            tags=row.tags,
            provenance=Provenance.model_validate(row.provenance),
            content_hash=row.content_hash,
            created_at=from_epoch(row.created_at),
            updated_at=from_epoch(row.valid_from),
            reads=row.reads + (pending[0] if pending else 0),
            last_read_at=from_epoch(last_read) if last_read is not None else None,
            size_bytes=row.size_bytes,
            fingerprint=row.fingerprint,
            payload=row.payload,
            stale=row.stale,
        )

    def _audit_ok(self, principal: str, op: str, cube: str | None, memory_id: str | None = None, detail: str = "") -> None:
        self._join_pending_reads()  # earlier reads are audited before this change (memos.kernel.reads)
        self.store.audit(self.clock.now(), principal, op, cube, memory_id, "ok", detail)

    def _emit(self, type_: str, cube: str | None, memory_id: str | None, principal: str | None, **data: Any) -> None:
        """Write an event to the outbox (same transaction as the change); observers get it after the commit."""
        self.store.emit(self.clock.now(), type_, cube, memory_id, principal, data)
        self._pending_events().append((type_, cube, {"memory_id": memory_id, "principal": principal, **data}))

    def _append(
        self, row: VersionRow | None, *, memory_id: str, cube: str, kind: str, state: State | str, content: str,
        metadata: dict[str, Any], tags: tuple[str, ...], provenance: Provenance, now: float,
        fingerprint: dict[str, Any] | None = None, payload: dict[str, Any] | None = None,
    ) -> VersionRow:
        version = 1 if row is None else row.current_version + 1
        kind, payload, demoted = self._settle_kind(row, kind, str(state), content, payload)
        old = row.payload if row is not None else None
        if old is not None and (payload is None or payload["path"] != old["path"]):
            # The current version no longer references this payload: delete the file once the change commits.
            self.after_commit(lambda p=Path(old["path"]): self._delete_blob(p))
        if demoted:
            fingerprint = None
            self._emit("evicted", cube, memory_id, provenance.author, tier="disk", reason=provenance.operation,
                       version=version)
        self.store.append_version(
            memory_id=memory_id, version=version, cube=cube, kind=kind, state=str(state), content=content,
            metadata=metadata, tags=tags, provenance=provenance.model_dump(mode="json"),
            content_hash=content_hash(content), size_bytes=len(content.encode("utf-8")) + (payload or {}).get("size_bytes", 0),
            fingerprint=fingerprint, payload=payload, at=now,
        )
        self._mark_children_stale(memory_id, version, now)
        new = self.store.get_version(memory_id, version)
        assert new is not None and new.version == version
        return new

    def _mark_children_stale(self, memory_id: str, new_version: int, now: float) -> None:
        """Memories derived from an older version of ``memory_id`` no longer reflect their source."""
        for child_id, parent_version in self.store.children_of(memory_id):
            if parent_version < new_version and child_id != memory_id:
                self.store.set_stale(child_id, True)
                self._emit("stale", self.store.memory_cube(child_id), child_id, None,
                           source=memory_id, source_version=new_version)

    def _policy_rule(self, principal: str, call: Any) -> str | None:
        """The rule a change is attributed to. Only superusers (the policy scheduler) may attribute changes."""
        rule = getattr(call, "policy_rule", None)
        if rule is not None and principal not in self.superusers:
            raise PermissionDenied(f"{principal} may not attribute a change to policy rule {rule!r}; only the "
                                   "policy scheduler (a system principal) may", right="system")
        return rule

    def _run_long(self, principal: str, call: Any) -> BaseModel:
        """plan (transaction) -> work (model host, kernel released) -> commit (transaction); abort undoes the plan.

        Work worth following (a plan whose ``job_args`` says so) runs as a job: ``jobs`` shows its progress and
        ``cancel`` stops it (``memos.kernel.jobs``)."""
        op = call.op
        plan = self.in_transaction(lambda: getattr(self, f"_plan_{op}")(principal, call))
        abort = getattr(self, f"_abort_{op}")
        job_args = plan.job_args() if hasattr(plan, "job_args") else None
        job = self.jobs.start(op, principal, **job_args) if job_args is not None else None
        try:
            try:
                outcome = getattr(self, f"_work_{op}")(call, plan, job)
            except MemosError:
                self.in_transaction(lambda: abort(principal, plan))
                raise
            except Exception as exc:  # the model host is a backend: translate its failures once, here
                self.in_transaction(lambda: abort(principal, plan))
                raise BackendError(f"model host failed during {op}: {exc}", op=op) from exc
            try:
                result = self.in_transaction(lambda: getattr(self, f"_commit_{op}")(principal, call, plan, outcome))
            except MemosError:
                self.in_transaction(lambda: abort(principal, plan))
                raise
        except MemosError as exc:
            if job is not None:
                job.end("cancelled" if isinstance(exc, Cancelled) else "failed", f"{exc.code}: {exc.message}")
                if job_args.get("rule") is None:  # a policy's failed action is reported by the scheduler's report
                    self._report_failed_job(job.snapshot(), exc)
            raise
        if job is not None:
            job.end("done")
        return result

    def _check_expected(self, row: VersionRow, expected: int | None) -> None:
        if expected is not None and expected != row.current_version:
            raise VersionConflict(
                f"memory {row.memory_id} is at version {row.current_version}, not the expected {expected}",
                memory_id=row.memory_id, expected=expected, current=row.current_version,
            )

    # -------------------------------------------------------------------------------------------------- cubes

    def _cube_info(self, name: str) -> CubeInfo:
        cube = self.store.get_cube(name)
        if cube is None:
            raise NotFound(f"cube {name!r} does not exist", cube=name)
        counts: Counter[str] = Counter()
        total = 0
        for _, _, state, n, size in self.store.counts([name]):
            counts[state] += n
            total += size
        return CubeInfo(
            name=cube[0], owner=cube[1], description=cube[2], created_at=from_epoch(cube[3]),
            grants=tuple(Grant(principal=p, right=r) for p, r in self._grants(name)),
            memories=dict(counts), bytes=total,
        )

    def _op_create_cube(self, principal: str, call: sc.CreateCube) -> CubeInfo:
        if self.store.get_cube(call.name) is not None:
            if call.exist_ok:
                self._require_cube(principal, call.name, Right.READ)
                return self._cube_info(call.name)
            raise AlreadyExists(f"cube {call.name!r} already exists", cube=call.name)
        now = self.clock.now()
        self.store.insert_cube(call.name, principal, call.description, now)
        self.store.set_grant(call.name, principal, Right.ADMIN.value)
        self._audit_ok(principal, call.op, call.name)
        self._emit("cube_created", call.name, None, principal)
        return self._cube_info(call.name)

    def _op_drop_cube(self, principal: str, call: sc.DropCube) -> Ack:
        self._require_cube(principal, call.name, Right.ADMIN)
        purged = self.store.delete_cube(call.name)
        self.after_commit(self.store.erase_freed)
        self._audit_ok(principal, call.op, call.name, detail=f"purged {len(purged)} memories")
        self._emit("cube_dropped", call.name, None, principal, purged=len(purged))
        return Ack(detail=f"dropped {call.name} and {len(purged)} memories")

    def _op_list_cubes(self, principal: str, call: sc.ListCubes) -> CubeList:
        return CubeList(cubes=tuple(self._cube_info(c) for c in self._readable_cubes(principal)))

    def _op_cube_info(self, principal: str, call: sc.GetCube) -> CubeInfo:
        self._require_cube(principal, call.name, Right.READ)
        return self._cube_info(call.name)

    def _op_grant(self, principal: str, call: sc.GrantRight) -> CubeInfo:
        self._require_cube(principal, call.cube, Right.ADMIN)
        owner = self.store.get_cube(call.cube)[1]  # type: ignore[index]
        if call.principal == owner and call.right_ != Right.ADMIN:
            raise InvalidSyscall(f"{owner} owns cube {call.cube!r}; the owner's admin right cannot be lowered", cube=call.cube)
        self.store.set_grant(call.cube, call.principal, call.right_.value)
        self._audit_ok(principal, call.op, call.cube, detail=f"{call.principal}={call.right_.value}")
        self._emit("granted", call.cube, None, principal, to=call.principal, right=call.right_.value)
        return self._cube_info(call.cube)

    def _op_revoke(self, principal: str, call: sc.RevokeRight) -> CubeInfo:
        self._require_cube(principal, call.cube, Right.ADMIN)
        owner = self.store.get_cube(call.cube)[1]  # type: ignore[index]
        if call.principal == owner:
            raise InvalidSyscall(f"{owner} owns cube {call.cube!r}; the owner's admin right cannot be revoked", cube=call.cube)
        self.store.delete_grant(call.cube, call.principal)
        self._audit_ok(principal, call.op, call.cube, detail=call.principal)
        self._emit("revoked", call.cube, None, principal, frm=call.principal)
        return self._cube_info(call.cube)

    # -------------------------------------------------------------------------------------------------- memories

    def _parents(self, principal: str, refs: Iterable[MemoryRef]) -> list[VersionRow]:
        parents = []
        for ref in refs:
            parents.append(self._require_memory(principal, ref.id, Right.READ, ref.version))
        return parents

    def _op_write(self, principal: str, call: sc.Write) -> Memory:
        self._require_cube(principal, call.cube, Right.WRITE)
        if (done := idempotency.replayed(self.store, principal, call, self.to_memory)) is not None:
            return done  # a retry of a write that committed: the memory it wrote, not a second one
        check_content(call.content)
        check_metadata(call.metadata)
        parents = self._parents(principal, call.derived_from)
        trust = weakest([initial_trust(call.source, call.trust), *(p.provenance.get("trust", "trusted") for p in parents)])
        now = self.clock.now()
        memory_id = self.new_id()
        provenance = Provenance(
            author=principal, source=call.source, source_refs=call.source_refs, derived_from=call.derived_from,
            operation="write", trust=trust,
        )
        self.store.insert_memory(memory_id, call.cube, "plaintext", State.ACTIVE.value, now)
        row = self._append(
            None, memory_id=memory_id, cube=call.cube, kind="plaintext", state=State.ACTIVE, content=call.content,
            metadata=call.metadata, tags=tuple(dict.fromkeys(call.tags)), provenance=provenance, now=now,
        )
        idempotency.remember(self.store, principal, call, memory_id, 1, now)
        self._audit_ok(principal, call.op, call.cube, memory_id)
        self._emit("written", call.cube, memory_id, principal, version=1, trust=trust.value)
        return self.to_memory(row)

    def _op_read(self, principal: str, call: sc.Read) -> Memory:
        row = self._require_memory(principal, call.id, Right.READ, call.version)
        now = self.clock.now()
        self._record_reads([row.memory_id], principal, now)
        self._audit_read(principal, call.op, row.cube, row.memory_id, detail=f"v{row.version}")
        return self.to_memory(self.store.get_version(row.memory_id, row.version))  # type: ignore[arg-type]

    def _op_list(self, principal: str, call: sc.ListMemories) -> MemoryList:
        self._require_cube(principal, call.cube, Right.READ)
        rows = self.store.list_memories(call.cube, tuple(s.value for s in call.states), call.limit, call.offset,
                                        tuple(call.tags))
        self._audit_read(principal, call.op, call.cube, detail=f"{len(rows)} memories")
        return MemoryList(memories=tuple(self.to_memory(r) for r in rows))

    def _op_update(self, principal: str, call: sc.Update) -> Memory:
        row = self._require_memory(principal, call.id, Right.WRITE)
        self._check_expected(row, call.expected_version)
        if row.state == State.DELETED:
            raise InvalidState(f"memory {row.memory_id} is deleted; restore it before updating", memory_id=row.memory_id)
        if call.content is None and call.metadata is None and call.tags is None:
            raise InvalidSyscall("update changes nothing: give content, metadata or tags")
        if call.content is not None and row.kind == "parametric":
            raise InvalidState(f"memory {row.memory_id} is an adapter: its knowledge is in its weights; update its "
                               "sources and distill again", memory_id=row.memory_id)
        content = check_content(call.content) if call.content is not None else row.content
        metadata = check_metadata(call.metadata) if call.metadata is not None else row.metadata
        tags = tuple(dict.fromkeys(call.tags)) if call.tags is not None else row.tags
        prev = Provenance.model_validate(row.provenance)
        provenance = prev.model_copy(update={
            "author": principal, "source_refs": call.source_refs, "operation": "update",
            "policy_rule": self._policy_rule(principal, call),
        })
        new = self._append(
            row, memory_id=row.memory_id, cube=row.cube, kind=row.kind, state=row.state, content=content,
            metadata=metadata, tags=tags, provenance=provenance, now=self.clock.now(),
            fingerprint=row.fingerprint, payload=row.payload,
        )
        self._audit_ok(principal, call.op, row.cube, row.memory_id, detail=f"v{new.version}")
        self._emit("updated", row.cube, row.memory_id, principal, version=new.version)
        return self.to_memory(new)

    def _transition(self, principal: str, call: Any, *, to: State, allowed_from: tuple[State, ...], event: str) -> Memory:
        row = self._require_memory(principal, call.id, Right.WRITE)
        self._check_expected(row, getattr(call, "expected_version", None))
        if State(row.state) not in allowed_from:
            raise InvalidState(
                f"memory {row.memory_id} is {row.state}; {call.op} needs it to be {' or '.join(s.value for s in allowed_from)}",
                memory_id=row.memory_id, state=row.state,
            )
        prev = Provenance.model_validate(row.provenance)
        provenance = prev.model_copy(update={
            "author": principal, "operation": call.op, "source_refs": (), "policy_rule": self._policy_rule(principal, call),
        })
        new = self._append(
            row, memory_id=row.memory_id, cube=row.cube, kind=row.kind, state=to, content=row.content,
            metadata=row.metadata, tags=row.tags, provenance=provenance, now=self.clock.now(),
            fingerprint=row.fingerprint, payload=row.payload,
        )
        self._audit_ok(principal, call.op, row.cube, row.memory_id, detail=f"v{new.version}")
        self._emit(event, row.cube, row.memory_id, principal, version=new.version, rule=provenance.policy_rule)
        return self.to_memory(new)

    def _op_delete(self, principal: str, call: sc.Delete) -> Memory:
        return self._transition(principal, call, to=State.DELETED, allowed_from=(State.ACTIVE, State.ARCHIVED), event="deleted")

    def _op_purge(self, principal: str, call: sc.Purge) -> Ack:
        row = self._require_memory(principal, call.id, Right.WRITE)
        rule = self._policy_rule(principal, call)
        history = self.store.history(call.id)
        children = [c for c, _ in self.store.children_of(call.id) if c != call.id]
        self.store.purge_memory(call.id)
        self.after_commit(self.store.erase_freed)
        for path in {v.payload["path"] for v in history if v.payload}:
            self.after_commit(lambda p=Path(path): self._delete_blob(p))
        now = self.clock.now()
        for child in children:
            self.store.set_stale(child, True)
            self._emit("stale", self.store.memory_cube(child), child, principal, source=call.id, purged=True)
        self._audit_ok(principal, call.op, row.cube, call.id, detail=f"purged {len(history)} versions")
        self._emit("purged", row.cube, call.id, principal, versions=len(history), rule=rule, at=now)
        return Ack(detail=f"purged {call.id}: {len(history)} versions; {len(children)} derived memories marked stale")

    def _op_archive(self, principal: str, call: sc.Archive) -> Memory:
        return self._transition(principal, call, to=State.ARCHIVED, allowed_from=(State.ACTIVE,), event="archived")

    def _op_restore(self, principal: str, call: sc.Restore) -> Memory:
        return self._transition(principal, call, to=State.ACTIVE, allowed_from=(State.DELETED, State.ARCHIVED), event="restored")

    def _op_history(self, principal: str, call: sc.History) -> MemoryList:
        row = self._require_memory(principal, call.id, Right.READ)
        self._audit_read(principal, call.op, row.cube, row.memory_id)
        return MemoryList(memories=tuple(self.to_memory(r) for r in self.store.history(call.id)))

    def _op_rollback(self, principal: str, call: sc.Rollback) -> Memory:
        row = self._require_memory(principal, call.id, Right.WRITE)
        self._check_expected(row, call.expected_version)
        if row.state == State.DELETED:
            raise InvalidState(f"memory {row.memory_id} is deleted; restore it before rolling back", memory_id=row.memory_id)
        target = self.store.get_version(call.id, call.to_version)
        if target is None:
            raise NotFound(f"memory {call.id} has no version {call.to_version}", memory_id=call.id, version=call.to_version)
        if target.kind != row.kind:
            raise InvalidState(
                f"version {call.to_version} is {target.kind} and the memory is now {row.kind}; migrate instead",
                memory_id=call.id,
            )
        prev = Provenance.model_validate(target.provenance)
        provenance = prev.model_copy(update={
            "author": principal, "operation": f"rollback:v{call.to_version}", "source_refs": (), "policy_rule": None,
        })
        new = self._append(
            row, memory_id=row.memory_id, cube=row.cube, kind=row.kind, state=row.state, content=target.content,
            metadata=target.metadata, tags=target.tags, provenance=provenance, now=self.clock.now(),
            fingerprint=target.fingerprint, payload=target.payload,
        )
        self._audit_ok(principal, call.op, row.cube, row.memory_id, detail=f"v{new.version}=v{call.to_version}")
        self._emit("rolled_back", row.cube, row.memory_id, principal, version=new.version, to_version=call.to_version)
        return self.to_memory(new)

    def _op_link(self, principal: str, call: sc.LinkMemories) -> Ack:
        source = self._require_memory(principal, call.source, Right.WRITE)
        self._require_memory(principal, call.target, Right.READ)
        self.store.add_link(call.source, call.target, call.relation, principal, self.clock.now())
        self._audit_ok(principal, call.op, source.cube, call.source, detail=f"{call.relation}->{call.target}")
        self._emit("linked", source.cube, call.source, principal, target=call.target, relation=call.relation)
        return Ack(detail=f"{call.source} -{call.relation}-> {call.target}")

    def _op_fuse(self, principal: str, call: sc.Fuse) -> Memory:
        self._require_cube(principal, call.cube, Right.WRITE)
        check_content(call.content)
        check_metadata(call.metadata)
        if len(set(call.ids)) != len(call.ids):
            raise InvalidSyscall("fuse needs distinct memory ids")
        needed = Right.READ if call.keep_sources else Right.WRITE
        sources = [self._require_memory(principal, i, needed) for i in call.ids]
        for s in sources:
            if s.state != State.ACTIVE:
                raise InvalidState(f"memory {s.memory_id} is {s.state}; only active memories can be fused", memory_id=s.memory_id)
        now = self.clock.now()
        refs = tuple(MemoryRef(id=s.memory_id, version=s.version) for s in sources)
        rule = self._policy_rule(principal, call)
        provenance = Provenance(
            author=principal, source=Source.DERIVED, derived_from=refs, operation="fuse", policy_rule=rule,
            trust=weakest(s.provenance.get("trust", "trusted") for s in sources),
        )
        memory_id = self.new_id()
        self.store.insert_memory(memory_id, call.cube, "plaintext", State.ACTIVE.value, now)
        row = self._append(
            None, memory_id=memory_id, cube=call.cube, kind="plaintext", state=State.ACTIVE, content=call.content,
            metadata=call.metadata, tags=tuple(dict.fromkeys(call.tags)), provenance=provenance, now=now,
        )
        if not call.keep_sources:
            for s in sources:
                prov = Provenance.model_validate(s.provenance).model_copy(
                    update={"author": principal, "operation": "fuse:retired", "source_refs": (memory_id,), "policy_rule": rule}
                )
                self._append(
                    s, memory_id=s.memory_id, cube=s.cube, kind=s.kind, state=State.ARCHIVED, content=s.content,
                    metadata=s.metadata, tags=s.tags, provenance=prov, now=now, fingerprint=s.fingerprint, payload=s.payload,
                )
        self._audit_ok(principal, call.op, call.cube, memory_id, detail=",".join(call.ids))
        self._emit("fused", call.cube, memory_id, principal, sources=list(call.ids))
        return self.to_memory(row)

    def _set_pin(self, principal: str, call: Any, pinned: bool) -> Memory:
        row = self._require_memory(principal, call.id, Right.WRITE)
        rule = self._policy_rule(principal, call)
        self.store.set_pinned(row.memory_id, pinned)
        self._audit_ok(principal, call.op, row.cube, row.memory_id)
        self._emit("pinned" if pinned else "unpinned", row.cube, row.memory_id, principal, rule=rule)
        return self.to_memory(self.store.get_version(row.memory_id))  # type: ignore[arg-type]

    def _op_pin(self, principal: str, call: sc.Pin) -> Memory:
        return self._set_pin(principal, call, True)

    def _op_unpin(self, principal: str, call: sc.Unpin) -> Memory:
        return self._set_pin(principal, call, False)

    # -------------------------------------------------------------------------------------------------- search

    def _op_search(self, principal: str, call: sc.Search) -> SearchResult:
        cubes = tuple(dict.fromkeys(call.cubes))
        at = to_epoch(call.as_of) if call.as_of is not None else None
        hits = self._search_hits(principal, call.query, cubes, call.k, call.filters, at=at, mode=call.mode)
        via: dict[int, str] = {}
        if call.expand and at is None:
            hits, via = self._expand_hits(principal, hits, cubes, call.filters, call.k, call.expand)
        self._record_reads([row.memory_id for row, _ in hits], principal, self.clock.now())
        self._audit_read(principal, call.op, cubes[0] if len(cubes) == 1 else None,
                       detail=f"{len(hits)} hits in {','.join(cubes)}"[:1000])
        fresh = self.store.versions_by_rowid(row.rowid for row, _ in hits)
        return SearchResult(hits=tuple(
            SearchHit(memory=self.to_memory(fresh.get(row.rowid, row)), score=item.score,
                      dense_rank=item.dense_rank, lexical_rank=item.lexical_rank, via=via.get(row.rowid))
            for row, item in hits
        ))

    def _query_vector(self, query: str) -> list[float]:
        """The query's embedding: computed by ``execute`` before it took the kernel, else now."""
        ready = getattr(self._tls, "query_vectors", None) or {}
        return ready[query] if query in ready else self.embedder.embed([query])[0]

    def _embed_queries(self, call: Any) -> None:
        """Embed a searching syscall's query before taking the kernel (embedding is the slow part of a search)."""
        query = None
        if (call.op == "search" and call.mode != "lexical") or call.op == "assemble_context":
            query = call.query
        elif call.op == "generate" and call.cubes and not call.memory:
            users = [m.content for m in call.messages if m.role == "user"]
            query = users[-1][:4096] if users else None
        self._tls.query_vectors = {query: self.embedder.embed([query])[0]} if query else None

    def _search_hits(
        self, principal: str, query: str, cubes: tuple[str, ...], k: int, f: sc.SearchFilters, *,
        at: float | None = None, mode: str = "hybrid",
    ) -> list[tuple[VersionRow, Fused]]:
        """Hybrid retrieval with ACL checks and filters; best first. Does not count reads (callers decide)."""
        for cube in cubes:
            self._require_cube(principal, cube, Right.READ)
        limit = max(_CANDIDATES, k * 5)
        dense: list[tuple[str, int]] = []
        if mode in ("hybrid", "dense"):
            equals = {"trust": f.trust.value} if f.trust else {}
            one_of: dict[str, tuple[str, ...]] = {}
            if f.kinds:
                one_of["kind"] = tuple(x.value for x in f.kinds)
            if f.authors:
                one_of["author"] = tuple(f.authors)
            if f.sources:
                one_of["source"] = tuple(x.value for x in f.sources)
            q = IndexQuery(embedding=self._query_vector(query), cubes=cubes, limit=limit, at=at, equals=equals,
                           one_of=one_of)
            dense = [parse_entry_id(eid) for eid, _ in self.index.query(q)]
        lexical: list[int] = []
        if mode in ("hybrid", "lexical"):
            lexical = [rowid for rowid, _ in self.store.lexical(query, cubes, at, limit)]
        dense_rows = {}
        for mid, version in dense:
            r = self.store.get_version(mid, version)
            if r is not None:
                dense_rows[r.rowid] = r
        rows = {**dense_rows, **self.store.versions_by_rowid(r for r in lexical if r not in dense_rows)}
        hits = []
        for item in reciprocal_rank_fusion(list(dense_rows), lexical):
            row = rows.get(item.key)
            if row is None or not self._passes(row, f):
                continue
            if row.provenance.get("source") == Source.GENERATED:  # a model's own answer ranks below observed facts
                item = Fused(item.key, item.score * GENERATED_WEIGHT, item.dense_rank, item.lexical_rank)
            hits.append((row, item))
        hits.sort(key=lambda h: -h[1].score)  # stable: fusion order breaks ties
        return hits[:k]

    @staticmethod
    def _passes(row: VersionRow, f: sc.SearchFilters) -> bool:
        prov = row.provenance
        if row.state != State.ACTIVE:
            return False
        if f.tags and not set(f.tags) <= set(row.tags):
            return False
        if any(row.metadata.get(k) != v for k, v in f.metadata.items()):
            return False
        if f.trust and prov.get("trust", "trusted") != f.trust.value:
            return False
        if f.kinds and row.kind not in {k.value for k in f.kinds}:
            return False
        if f.authors and prov.get("author") not in f.authors:
            return False
        return not (f.sources and prov.get("source") not in {s.value for s in f.sources})

    # -------------------------------------------------------------------------------------------------- observability

    def _op_stats(self, principal: str, call: sc.GetStats) -> Stats:
        cubes = self._readable_cubes(principal)
        memories: dict[str, dict[str, int]] = {}
        size: Counter[str] = Counter()
        for _, kind, state, n, b in self.store.counts(cubes):
            memories.setdefault(kind, {}).setdefault(state, 0)
            memories[kind][state] += n
            size[kind] += b
        return Stats(
            cubes=len(cubes), memories=memories, versions=self.store.version_count(cubes), bytes=dict(size),
            syscalls=dict(self.syscall_counts), latency_ms=self._latency_summary(),
        )

    def _latency_summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for op, window in list(self._latencies.items()):
            values = sorted(window)
            if values:
                out[op] = {
                    "p50": round(values[len(values) // 2] * 1000, 3),
                    "p95": round(values[min(len(values) - 1, int(len(values) * 0.95))] * 1000, 3),
                }
        return out

    def _op_events(self, principal: str, call: sc.GetEvents) -> EventList:
        if principal in self.superusers and not call.cubes:
            cubes = None
        else:
            readable = set(self._readable_cubes(principal))
            for cube in call.cubes:
                self._require_cube(principal, cube, Right.READ)
            cubes = [c for c in (call.cubes or sorted(readable)) if c in readable]
        rows = self.store.events(call.since, call.limit, cubes, call.types, call.latest)
        events = tuple(
            Event(seq=r[0], at=from_epoch(r[1]), type=r[2], cube=r[3], memory_id=r[4], principal=r[5], data=json.loads(r[6]))
            for r in rows
        )
        next_seq = events[-1].seq if events else max(call.since, 0)
        return EventList(events=events, next_seq=next_seq)

    def _visible_job(self, principal: str, job: Job) -> bool:
        if principal in self.superusers or principal == job.principal:
            return True
        readable = set(self._readable_cubes(principal))
        return all(cube in readable for cube in job.cubes)

    def _op_jobs(self, principal: str, call: sc.ListJobs) -> JobList:
        jobs = [j for j in self.jobs.all() if self._visible_job(principal, j)]
        if call.running_only:
            jobs = [j for j in jobs if j.state == "running"]
        return JobList(jobs=tuple(jobs))

    def _op_cancel(self, principal: str, call: sc.CancelJob) -> Job:
        handle = self.jobs.get(call.job_id)
        job = handle.snapshot()
        if not self._visible_job(principal, job):
            raise NotFound(f"no job {call.job_id}", job_id=call.job_id)  # existence concealed, as for memories
        if principal != job.principal and principal not in self.superusers:
            for cube in job.cubes:
                self._require_cube(principal, cube, Right.WRITE)
        if job.state != "running":
            raise InvalidState(f"job {job.id} has already ended ({job.state})", job_id=job.id, state=job.state)
        handle.request_cancel(principal)
        self._audit_ok(principal, "cancel", job.cubes[0] if job.cubes else None, job.target,
                       detail=f"{job.id} ({job.op}, started by {job.principal})")
        return handle.snapshot()

    def _op_snapshot(self, principal: str, call: sc.Snapshot) -> KernelState:
        cubes = list(dict.fromkeys(call.cubes)) or [c[0] for c in self.store.list_cubes()]
        for cube in cubes:
            self._require_cube(principal, cube, Right.ADMIN)
        self._join_pending_reads()  # policies count reads: they see every read made so far
        now = self.clock.now()
        rows = [r for r in self.store.current_memories(cubes) if r.state != State.DELETED]
        activation = sum(r.payload["size_bytes"] for r in self.store.current_of_kind("activation") if r.payload)
        return KernelState(
            at=from_epoch(now), memories=tuple(self.to_memory(r) for r in rows),
            read_times={k: tuple(v) for k, v in self.store.read_times(cubes, now - call.read_window_s).items()},
            activation_bytes=activation,
        )

    def _op_audit(self, principal: str, call: sc.GetAudit) -> AuditList:
        if call.cube is None:
            if principal not in self.superusers:
                raise PermissionDenied(f"{principal} may read the audit log of a cube it administers; name the cube",
                                       right="admin")
        else:
            self._require_cube(principal, call.cube, Right.ADMIN)
        rows = self.store.audit_records(call.cube, call.since, call.limit)
        return AuditList(records=tuple(
            AuditRecord(seq=r[0], at=from_epoch(r[1]), principal=r[2], op=r[3], cube=r[4], memory_id=r[5], outcome=r[6], detail=r[7])
            for r in rows
        ))

    def _report_failed_job(self, job: Job, exc: MemosError) -> None:
        try:
            self.record_event("job_failed", job.cubes[0] if job.cubes else None, job.target or next(iter(job.memory_ids), None),
                              job.principal, {"job": job.id, "op": job.op, "code": exc.code, "message": exc.message[:500],
                                              "memories": list(job.memory_ids)})
        except MemosError as event_exc:  # the operation's own error is what the caller must see
            self.log.error("could not record job_failed", job=job.id, error=event_exc.message)

    def record_event(
        self, type_: str, cube: str | None, memory_id: str | None, principal: str | None, data: dict[str, Any]
    ) -> None:
        """Record an event that no syscall made (a policy evaluation, a failed policy action) in the outbox, in its
        own transaction, and tell the observers once it committed. ``cube`` decides who sees it: the readers of that
        cube, or superusers only when it is None.

        Raises:
            BackendError: the event could not be written (nothing was recorded).
        """
        self.in_transaction(lambda: self._emit(type_, cube, memory_id, principal, **data))
        pending = self._pending_events()
        events = list(pending)
        pending.clear()
        for observer in self.observers:
            try:
                for event_type, event_cube, event_data in events:
                    observer.event(event_type, event_cube, event_data)
            except Exception as exc:  # an observer is outside the kernel's contract: report, never propagate
                self.log.error("kernel observer failed", observer=type(observer).__name__, error=repr(exc))
