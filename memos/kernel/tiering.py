"""Moving memories between kinds: migration, its journal, the activation budget and eviction.

A memory keeps its identity across kinds: ``migrate(to="activation")`` writes version n+1 of the *same* memory with
kind ``activation``, the KV-cache payload, the model fingerprint, and ``derived_from`` the plaintext version the
cache was built from; the text stays in the header, so the memory stays searchable and demotion loses nothing.

**Invariant.** A current version of kind ``activation`` is active, has a payload, and encodes exactly its content.
Any new version that changes the content or leaves the active state (update, delete, archive, rollback, fuse)
drops the payload and is of kind ``plaintext`` (``_settle_kind``): a cache is never served for text it does not hold.

**Migrations are long operations** (``Kernel._run_long``): *plan* (a transaction: checks, journal row ``started``),
*work* (the model host builds the payload file; the kernel is not held), *commit* (a transaction: the version and
the journal row ``done``, or nothing). A failure rolls the journal row back and deletes the file. At start-up,
journal rows still ``started`` (a crash mid-migration) are rolled back and their files deleted, and payload files
that no current version references are removed: every memory is either fully migrated or not at all.

**Activation budget** (disk tier): total payload bytes of current activation versions and their count. When a
migration would exceed it, activation memories are demoted to plaintext in this order: unpinned only; least
recently used first (last read, else last change); then fewest reads; never the ones being migrated. Pinned
memories are never evicted. If the budget still cannot be met, the migration fails with ``CapacityExceeded``.
The RAM tier (loaded payloads) is the model host's LRU (``memos.models.service``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.errors import (
    Cancelled,
    CapacityExceeded,
    InvalidState,
    InvalidSyscall,
    MemosError,
    ModelUnavailable,
    VersionConflict,
    error_from_wire,
)
from memos.types import Kind, KVCompression, MemoryList, MemoryRef, Provenance, Right, State

if TYPE_CHECKING:
    from memos.kernel.core import Kernel
    from memos.kernel.jobs import RunningJob
    from memos.models.port import ActivationBuilt, DistillStatus, ModelPort
    from memos.storage.sqlite import VersionRow

GIB = 1024**3


@dataclass(frozen=True)
class ActivationBudget:
    """Limits of the activation disk tier (None: unlimited)."""

    disk_bytes: int | None = 2 * GIB
    max_memories: int | None = None


@dataclass
class _Planned:
    row: VersionRow
    journal: int
    path: Path | None


@dataclass
class _DistillPlan:
    memory_id: str
    cube: str
    path: Path
    journal: int
    sources: list[VersionRow]
    rule: str | None
    replaces: VersionRow | None = None  # retraining: the parametric memory that gets the new version

    def job_args(self) -> dict[str, Any]:
        return {"cubes": [self.cube, *(r.cube for r in self.sources)], "memory_ids": [r.memory_id for r in self.sources],
                "target": self.memory_id, "rule": self.rule, "phase": "train"}


@dataclass
class _MigratePlan:
    to: Kind
    rule: str | None
    todo: list[_Planned] = field(default_factory=list)
    unchanged: list[VersionRow] = field(default_factory=list)

    def job_args(self) -> dict[str, Any] | None:
        """A job only when the model host has payloads to build (a demotion is one quick transaction)."""
        building = [item.row for item in self.todo if item.path is not None]
        if not building:
            return None
        return {"cubes": [r.cube for r in building], "memory_ids": [r.memory_id for r in building],
                "total": len(building), "rule": self.rule, "phase": f"build {self.to.value}"}


class TieringOps:
    """Kernel mixin: the ``migrate`` syscall, demotion, the budget and crash recovery of migrations."""

    LONG_OPS = frozenset({"migrate", "generate", "distill", "ingest", "compress"})

    def _require_model(self: Kernel, what: str) -> ModelPort:
        if self.model is None:
            raise ModelUnavailable(
                f"{what} needs a model host and none is configured (start memos with a model, e.g. Runtime.start() "
                "with Settings(model='smollm2'))"
            )
        return self.model

    # -------------------------------------------------------------------------------------------- migrate: plan

    def _plan_migrate(self: Kernel, principal: str, call: Any) -> _MigratePlan:
        rule = self._policy_rule(principal, call)
        plan = _MigratePlan(to=Kind(call.to), rule=rule)
        if call.expected_version is not None and len(call.ids) != 1:
            raise InvalidSyscall("expected_version needs exactly one id")
        now = self.clock.now()
        for memory_id in dict.fromkeys(call.ids):
            row = self._require_memory(principal, memory_id, Right.WRITE)
            self._check_expected(row, call.expected_version)
            if row.kind == plan.to:
                plan.unchanged.append(row)
                continue
            if plan.to == Kind.PARAMETRIC:
                raise InvalidSyscall(
                    "migrate keeps each memory's identity and parametric memory is learnt from a set of memories: use "
                    "distill(ids, cube), which trains one adapter on them into a new parametric memory"
                )
            if row.state != State.ACTIVE:
                raise InvalidState(f"memory {row.memory_id} is {row.state}; only active memories migrate",
                                   memory_id=row.memory_id)
            path = None
            if plan.to == Kind.ACTIVATION:
                self._require_model("migrate(to='activation')")
                if row.kind != Kind.PLAINTEXT:
                    raise InvalidState(f"memory {row.memory_id} is {row.kind}; only plaintext becomes activation",
                                       memory_id=row.memory_id)
                path = self.blob_dir / "activation" / f"{row.memory_id}-v{row.current_version + 1}.kv.safetensors"
            journal = self.store.journal_start(
                row.memory_id, row.current_version, plan.to.value, str(path) if path else None, rule, principal, now
            )
            plan.todo.append(_Planned(row, journal, path))
        return plan

    # -------------------------------------------------------------------------------------------- migrate: work

    def _work_migrate(self: Kernel, call: Any, plan: _MigratePlan, job: RunningJob | None) -> dict[int, ActivationBuilt]:
        built: dict[int, ActivationBuilt] = {}
        todo = [item for item in plan.todo if item.path is not None]
        for done, item in enumerate(todo):
            if job is not None:
                job.raise_if_cancelled()  # between memories: what was built is deleted by the abort
            # Only a compressed build passes the argument: ports written before compression keep working.
            extra = {} if call.compression is None else {"compression": call.compression.model_dump()}
            built[item.journal] = self.model.build_activation(item.row.content, str(item.path), **extra)  # type: ignore[union-attr]
            if job is not None:
                job.progress(done + 1, len(todo))
        return built

    # -------------------------------------------------------------------------------------------- migrate: commit

    def _commit_migrate(self: Kernel, principal: str, call: Any, plan: _MigratePlan, built: dict[int, Any]) -> MemoryList:
        now = self.clock.now()
        out = []
        for item in plan.todo:
            row = self.store.get_version(item.row.memory_id)
            if row is None or row.current_version != item.row.current_version:
                raise VersionConflict(
                    f"memory {item.row.memory_id} changed while it was migrating; nothing was migrated",
                    memory_id=item.row.memory_id, expected=item.row.current_version,
                    current=None if row is None else row.current_version,
                )
            prov = Provenance.model_validate(row.provenance).model_copy(update={
                "author": principal, "operation": f"migrate:{plan.to.value}", "policy_rule": plan.rule,
                "derived_from": (MemoryRef(id=row.memory_id, version=row.version),), "source_refs": (),
            })
            if plan.to == Kind.ACTIVATION:
                result = built[item.journal]
                new = self._append(
                    row, memory_id=row.memory_id, cube=row.cube, kind=Kind.ACTIVATION.value, state=row.state,
                    content=row.content, metadata=row.metadata, tags=row.tags, provenance=prov, now=now,
                    fingerprint=result.fingerprint.model_dump(), payload=result.payload.model_dump(),
                )
                detail = {"tokens": result.tokens, "bytes": result.payload.size_bytes}
                if result.compression is not None:
                    method = KVCompression.model_validate(result.compression).method
                    detail |= {"compression": method, "kept_tokens": result.kept_tokens}
            else:
                new = self._append(
                    row, memory_id=row.memory_id, cube=row.cube, kind=plan.to.value, state=row.state,
                    content=row.content, metadata=row.metadata, tags=row.tags, provenance=prov, now=now,
                )
                detail = {}
            self.store.journal_end(item.journal, "done", now)
            self._audit_ok(principal, "migrate", row.cube, row.memory_id, detail=f"{row.kind}->{plan.to.value} v{new.version}")
            self._emit("migrated", row.cube, row.memory_id, principal, frm=row.kind, to=plan.to.value,
                       rule=plan.rule, version=new.version, **detail)
            out.append(new)
        if plan.to == Kind.ACTIVATION and plan.todo:
            self._enforce_activation_budget(keep={i.row.memory_id for i in plan.todo})
        return MemoryList(memories=tuple(self.to_memory(r) for r in [*out, *plan.unchanged]))

    def _abort_migrate(self: Kernel, principal: str, plan: _MigratePlan) -> None:
        now = self.clock.now()
        for item in plan.todo:
            self.store.journal_end(item.journal, "rolled_back", now, "failed before commit")
            if item.path is not None:
                self.after_commit(lambda p=item.path: self._delete_blob(p))

    # -------------------------------------------------------------------------------------------- distill

    def _plan_distill(self: Kernel, principal: str, call: Any) -> _DistillPlan:
        self._require_model("distill")
        rule = self._policy_rule(principal, call)
        replaces, ids, cube = None, call.ids, call.cube
        if call.replaces is not None:
            replaces = self._require_memory(principal, call.replaces, Right.WRITE)
            if replaces.kind != Kind.PARAMETRIC or replaces.state == State.DELETED:
                raise InvalidState(f"memory {replaces.memory_id} is a {replaces.state} {replaces.kind} memory; replaces "
                                   "names a parametric memory to retrain", memory_id=replaces.memory_id)
            if cube is not None and cube != replaces.cube:
                raise InvalidSyscall(f"memory {replaces.memory_id} is in cube {replaces.cube!r}, not {cube!r}")
            cube = replaces.cube
            if not ids:  # retrain on what it was trained on, at the current versions; what was deleted is forgotten
                refs = dict.fromkeys(ref["id"] for ref in replaces.provenance.get("derived_from", ()))
                rows = [self.store.get_version(memory_id) for memory_id in refs]
                ids = tuple(r.memory_id for r in rows if r is not None and r.state == State.ACTIVE)
                if not ids:
                    raise InvalidState(f"no source of {replaces.memory_id} is active any more; delete it instead",
                                       memory_id=replaces.memory_id)
        assert cube is not None  # the syscall's validator: cube or replaces
        self._require_cube(principal, cube, Right.WRITE)
        sources = [self._require_memory(principal, m, Right.READ) for m in dict.fromkeys(ids)]
        if call.expected_versions is not None:
            for memory_id, expected in zip(call.ids, call.expected_versions, strict=True):
                self._check_expected(next(r for r in sources if r.memory_id == memory_id), expected)
        for row in sources:
            if row.state != State.ACTIVE or row.kind == Kind.PARAMETRIC:
                raise InvalidState(f"memory {row.memory_id} is a {row.state} {row.kind} memory; distill takes active "
                                   "plaintext or activation memories", memory_id=row.memory_id)
            if row.provenance.get("trust") == "untrusted" and not call.allow_untrusted:
                raise InvalidSyscall(
                    f"memory {row.memory_id} is untrusted (source {row.provenance.get('source')}); untrusted memories "
                    "are not distilled into parametric memory unless allow_untrusted is set", memory_id=row.memory_id,
                )
        memory_id = replaces.memory_id if replaces is not None else self.new_id()
        version = replaces.current_version + 1 if replaces is not None else 1
        path = self.blob_dir / "parametric" / f"{memory_id}-v{version}.adapter.safetensors"
        journal = self.store.journal_start(memory_id, version - 1, Kind.PARAMETRIC.value, str(path), rule, principal,
                                           self.clock.now())
        return _DistillPlan(memory_id, cube, path, journal, sources, rule, replaces)

    def _work_distill(self: Kernel, call: Any, plan: _DistillPlan, job: RunningJob | None) -> DistillStatus:
        """Start the training on the model host, follow it (progress into the job), forward a cancellation."""
        model = self._require_model("distill")
        facts = [{"id": r.memory_id, "version": r.version, "text": r.content} for r in plan.sources]
        config = {"steps": call.steps} if call.steps else {}
        status = model.start_distill(facts, str(plan.path), config)
        cancel_sent = False
        try:
            while status.state == "running":
                if job is None or cancel_sent:
                    time.sleep(self.job_poll_s)
                elif job.wait_cancel(self.job_poll_s):
                    model.cancel_distill(status.job_id)
                    cancel_sent = True
                status = model.distill_status(status.job_id)
                if job is not None:
                    job.progress(status.step, status.total, phase=status.phase, loss=status.loss)
        finally:
            try:
                model.forget_distill(status.job_id)  # cancels it if this kernel thread is leaving early
            except MemosError as exc:
                self.log.warning("could not forget a distillation job", job=status.job_id, error=exc.message)
        if status.state == "done" and status.payload is not None:
            return status
        if status.state == "cancelled":
            if job is not None:
                job.raise_if_cancelled()
            raise Cancelled(f"the model host cancelled distillation {status.job_id}")
        if status.error:
            raise error_from_wire(status.error)
        raise InvalidState(f"distillation {status.job_id} ended {status.state} without an adapter")

    def _commit_distill(self: Kernel, principal: str, call: Any, plan: _DistillPlan, built: Any) -> Any:
        from memos.syscalls import MAX_CONTENT_BYTES

        now = self.clock.now()
        previous = None
        if plan.replaces is not None:
            previous = self.store.get_version(plan.memory_id)
            if previous is None or previous.version != plan.replaces.version:
                raise VersionConflict(f"memory {plan.memory_id} changed while it was being retrained; nothing was kept",
                                      memory_id=plan.memory_id, expected=plan.replaces.version)
        for row in plan.sources:
            current = self.store.get_version(row.memory_id)
            if current is None or current.version != row.version:
                raise VersionConflict(f"memory {row.memory_id} changed while it was being distilled; nothing was kept",
                                      memory_id=row.memory_id, expected=row.version)
        # The text of what the adapter knows: searchable, and the knowledge that survives the adapter.
        content = "\n".join(r.content for r in plan.sources)
        if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
            content = content.encode("utf-8")[: MAX_CONTENT_BYTES - 64].decode("utf-8", "ignore") + "\n[...]"
        ev = built.evaluation or {}
        provenance = Provenance(
            author=principal, source="derived", operation="distill", policy_rule=plan.rule,
            derived_from=tuple(MemoryRef(id=r.memory_id, version=r.version) for r in plan.sources),
            trust="untrusted" if any(r.provenance.get("trust") == "untrusted" for r in plan.sources) else "trusted",
        )
        metadata = {"distill": {k: ev.get(k) for k in (
            "facts", "steps", "recall_with", "recall_without", "held_out_recall_with", "held_out_recall_without",
            "locality_delta", "train_s", "final_loss",
        )}}
        tags = tuple(dict.fromkeys(call.tags)) or (previous.tags if previous is not None else ())
        if previous is None:
            self.store.insert_memory(plan.memory_id, plan.cube, Kind.PARAMETRIC.value, State.ACTIVE.value, now)
        row = self._append(
            previous, memory_id=plan.memory_id, cube=plan.cube, kind=Kind.PARAMETRIC.value, state=State.ACTIVE,
            content=content, metadata=metadata, tags=tags, provenance=provenance, now=now,
            fingerprint=(built.fingerprint or self.model.fingerprint()).model_dump(),  # type: ignore[union-attr]
            payload=built.payload.model_dump(),
        )
        if previous is not None and previous.stale:
            self.store.set_stale(plan.memory_id, False)  # trained on its sources' current versions again
            row = self.store.get_version(plan.memory_id)  # type: ignore[assignment]
        self.store.journal_end(plan.journal, "done", now)
        self._audit_ok(principal, "distill", plan.cube, plan.memory_id,
                       detail=f"{len(plan.sources)} memories" + (f", v{row.version}" if previous is not None else ""))
        self._emit("distilled", plan.cube, plan.memory_id, principal, rule=plan.rule, sources=len(plan.sources),
                   version=row.version, recall_with=ev.get("recall_with"), recall_without=ev.get("recall_without"),
                   locality_delta=ev.get("locality_delta"), bytes=built.payload.size_bytes)
        return self.to_memory(row)

    def _abort_distill(self: Kernel, principal: str, plan: _DistillPlan) -> None:
        self.store.journal_end(plan.journal, "rolled_back", self.clock.now(), "failed before commit")
        self.after_commit(lambda p=plan.path: self._delete_blob(p))

    # -------------------------------------------------------------------------------------------- demotion

    def _settle_kind(self: Kernel, row: VersionRow | None, kind: str, state: str, content: str,
                     payload: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None, bool]:
        """Enforce the activation invariant for a new version: returns (kind, payload, demoted)."""
        if kind != Kind.ACTIVATION or row is None or payload is None:
            return kind, payload, False
        if state == State.ACTIVE and content == row.content:
            return kind, payload, False
        return Kind.PLAINTEXT.value, None, True

    def _demote(self: Kernel, row: VersionRow, *, principal: str, reason: str, rule: str | None = None) -> VersionRow:
        prov = Provenance.model_validate(row.provenance).model_copy(update={
            "author": principal, "operation": "migrate:plaintext", "policy_rule": rule,
            "derived_from": (MemoryRef(id=row.memory_id, version=row.version),), "source_refs": (),
        })
        new = self._append(
            row, memory_id=row.memory_id, cube=row.cube, kind=Kind.PLAINTEXT.value, state=row.state,
            content=row.content, metadata=row.metadata, tags=row.tags, provenance=prov, now=self.clock.now(),
        )
        self._emit("evicted", row.cube, row.memory_id, principal, tier="disk", reason=reason, version=new.version)
        return new

    def _delete_blob(self: Kernel, path: Path) -> None:
        path.unlink(missing_ok=True)
        if self.model is not None:
            self.model.forget([str(path)])

    def _enforce_activation_budget(self: Kernel, keep: set[str]) -> None:
        budget = self.budgets
        rows = self.store.current_of_kind(Kind.ACTIVATION.value)
        total = sum(r.payload["size_bytes"] for r in rows if r.payload)
        count = len(rows)

        def over() -> bool:
            return (budget.disk_bytes is not None and total > budget.disk_bytes) or (
                budget.max_memories is not None and count > budget.max_memories
            )

        # Eviction order: unpinned only, least recently used first, then fewest reads (see the module docstring).
        candidates = sorted(
            (r for r in rows if not r.pinned and r.memory_id not in keep),
            key=lambda r: (r.last_read_at if r.last_read_at is not None else r.valid_from, r.reads),
        )
        for row in candidates:
            if not over():
                return
            self._demote(row, principal="system", reason="activation disk budget")
            total -= row.payload["size_bytes"] if row.payload else 0
            count -= 1
        if over():
            raise CapacityExceeded(
                f"the activation budget ({budget.disk_bytes} bytes, {budget.max_memories} memories) cannot hold "
                f"{count} caches of {total} bytes without evicting pinned memories or the ones being migrated",
                bytes=total, memories=count,
            )

    # -------------------------------------------------------------------------------------------- recovery

    def _recover_migrations(self: Kernel) -> None:
        """Roll back migrations a crash interrupted and delete payload files nothing references."""

        def recover() -> list[str]:
            rolled = []
            now = self.clock.now()
            for seq, memory_id, _from_version, _to_kind, path in self.store.open_migrations():
                self.store.journal_end(seq, "rolled_back", now, "interrupted (process ended mid-migration)")
                if path:
                    self.after_commit(lambda p=Path(path): p.unlink(missing_ok=True))
                cube = self.store.memory_cube(memory_id)
                self._emit("migration_rolled_back", cube, memory_id, "system", journal=seq)
                rolled.append(memory_id)
            return rolled

        rolled = self.in_transaction(recover)
        referenced = self.store.referenced_payload_paths()
        # Payloads of every version are kept for parametric memories (archive and restore keep the adapter); only
        # files no version references are garbage.
        referenced |= self.store.all_payload_paths()
        orphans = [p for d in ("activation", "parametric") for p in (self.blob_dir / d).glob("*") if str(p) not in referenced]
        for path in orphans:
            path.unlink(missing_ok=True)
        if rolled or orphans:
            self.log.warning("recovered interrupted migrations", rolled_back=rolled, orphan_blobs=len(orphans))
