"""Moving memories between kinds: migration, its journal, the activation budget and eviction.

A memory keeps its identity across kinds: ``migrate(to="activation")`` writes version n+1 of the *same* memory with
kind ``activation``, the KV-cache payload, the model fingerprint, and ``derived_from`` the plaintext version the
cache was built from; the text stays in the header, so the memory stays searchable and demotion loses nothing.

**Invariant.** A current version of kind ``activation`` is active, has a payload, and encodes exactly its content.
Any new version that changes the content or leaves the active state (update, delete, archive, rollback, fuse)
drops the payload and is of kind ``plaintext`` (``memos.kernel.versions.settle_kind``): a cache is never served for
text it does not hold.

**Migrations are long operations** (``memos.kernel.longops``): *plan* (a transaction: checks, journal row
``started``), *work* (the model host builds the payload file; the kernel is not held), *commit* (a transaction:
the version and the journal row ``done``, or nothing). A failure rolls the journal row back and deletes the file.
At start-up, journal rows still ``started`` (a crash mid-migration) are rolled back and their files deleted, and
payload files that no version references are removed: every memory is either fully migrated or not at all.

**Activation budget** (disk tier): per cube and under a global cap, enforced when a migration commits; what is
evicted, in which order and for whom is ``memos.kernel.budget``. The RAM tier (loaded payloads) is the model
host's LRU (``memos.models.service``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.errors import InvalidState, InvalidSyscall, VersionConflict
from memos.kernel import events as ev
from memos.kernel.authz import policy_rule, require_memory
from memos.kernel.budget import ActivationBudget, enforce_activation_budget
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation, require_model
from memos.kernel.ops.adapter_text import restore_sources
from memos.kernel.ops.groups import GroupPlan, abort_group, commit_group, plan_group, work_group
from memos.kernel.versions import check_expected, delete_blob, derived_provenance, next_version, to_memory
from memos.types import Kind, KVCompression, MemoryList, MemoryRef, Right, State

if TYPE_CHECKING:
    from memos.kernel.jobs import RunningJob
    from memos.kernel.kernel import Kernel
    from memos.models.port import ActivationBuilt
    from memos.storage.sqlite import VersionRow

@dataclass
class _Planned:
    row: VersionRow
    journal: int
    path: Path | None


@dataclass
class MigratePlan:
    to: Kind
    rule: str | None
    todo: list[_Planned] = field(default_factory=list)
    unchanged: list[VersionRow] = field(default_factory=list)


class MigrateOp(LongOperation):
    """``migrate(ids, to)``: version n+1 of each memory in another kind (see the module docstring)."""

    def plan(self, ctx: CallContext, call: Any) -> MigratePlan | GroupPlan:
        if call.group is not None:
            return plan_group(ctx, call)
        kernel = ctx.kernel
        plan = MigratePlan(to=Kind(call.to), rule=policy_rule(ctx, call))
        if call.expected_version is not None and len(call.ids) != 1:
            raise InvalidSyscall("expected_version needs exactly one id")
        now = kernel.clock.now()
        for memory_id in dict.fromkeys(call.ids):
            row = require_memory(ctx, memory_id, Right.WRITE)
            check_expected(row, call.expected_version)
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
                require_model(ctx, "migrate(to='activation')")
                if row.kind != Kind.PLAINTEXT:
                    raise InvalidState(f"memory {row.memory_id} is {row.kind}; only plaintext becomes activation",
                                       memory_id=row.memory_id)
                path = kernel.blob_dir / "activation" / f"{row.memory_id}-v{row.current_version + 1}.kv.safetensors"
            journal = kernel.store.journal_start(
                row.memory_id, row.current_version, plan.to.value, str(path) if path else None, plan.rule,
                ctx.principal, now,
            )
            plan.todo.append(_Planned(row, journal, path))
        return plan

    def job_args(self, plan: MigratePlan | GroupPlan) -> dict[str, Any] | None:
        """A job only when the model host has payloads to build (a demotion is one quick transaction)."""
        if isinstance(plan, GroupPlan):
            return plan.job_args()
        building = [item.row for item in plan.todo if item.path is not None]
        if not building:
            return None
        return {"cubes": [r.cube for r in building], "memory_ids": [r.memory_id for r in building],
                "total": len(building), "rule": plan.rule, "phase": f"build {plan.to.value}"}

    def work(self, ctx: CallContext, call: Any, plan: MigratePlan | GroupPlan, job: RunningJob | None) -> Any:
        if isinstance(plan, GroupPlan):
            return work_group(ctx, call, plan, job)
        built: dict[int, ActivationBuilt] = {}
        todo = [item for item in plan.todo if item.path is not None]
        for done, item in enumerate(todo):
            if job is not None:
                job.raise_if_cancelled()  # between memories: what was built is deleted by the abort
            # Only a compressed build passes the argument: ports written before compression keep working.
            extra = {} if call.compression is None else {"compression": call.compression.model_dump()}
            built[item.journal] = ctx.kernel.model.build_activation(item.row.content, str(item.path), **extra)  # type: ignore[union-attr]
            if job is not None:
                job.progress(done + 1, len(todo))
        return built

    def commit(self, ctx: CallContext, call: Any, plan: MigratePlan | GroupPlan, built: Any) -> MemoryList:
        if isinstance(plan, GroupPlan):
            return commit_group(ctx, call, plan, built)
        store = ctx.kernel.store
        now = ctx.kernel.clock.now()
        out = []
        for item in plan.todo:
            row = store.get_version(item.row.memory_id)
            if row is None or row.current_version != item.row.current_version:
                raise VersionConflict(
                    f"memory {item.row.memory_id} changed while it was migrating; nothing was migrated",
                    memory_id=item.row.memory_id, expected=item.row.current_version,
                    current=None if row is None else row.current_version,
                )
            prov = derived_provenance(
                row, author=ctx.principal, operation=f"migrate:{plan.to.value}", policy_rule=plan.rule,
                derived_from=(MemoryRef(id=row.memory_id, version=row.version),), source_refs=(),
            )
            if row.kind == Kind.PARAMETRIC:  # archived; its sources' text comes back (memos.kernel.ops.adapter_text)
                new, restored = restore_sources(ctx, row, plan.rule)
                detail = {"restored": len(new.metadata["restored"]["restored"]),
                          "stand_ins": len(new.metadata["restored"]["stand_ins"])}
            elif plan.to == Kind.ACTIVATION:
                result = built[item.journal]
                new = next_version(ctx, row, prov, at=now, kind=Kind.ACTIVATION.value,
                                   fingerprint=result.fingerprint.model_dump(), payload=result.payload.model_dump())
                detail = {"tokens": result.tokens, "bytes": result.payload.size_bytes}
                if result.compression is not None:
                    method = KVCompression.model_validate(result.compression).method
                    detail |= {"compression": method, "kept_tokens": result.kept_tokens}
            else:
                new = next_version(ctx, row, prov, at=now, kind=plan.to.value, fingerprint=None, payload=None)
                detail = {}
            store.journal_end(item.journal, "done", now)
            ctx.audit_ok("migrate", row.cube, row.memory_id, detail=f"{row.kind}->{plan.to.value} v{new.version}")
            ctx.emit(ev.Migrated(
                cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, frm=row.kind, to=plan.to.value,
                rule=plan.rule, version=new.version, **detail,
            ))
            out.append(new)
            if row.kind == Kind.PARAMETRIC:
                out.extend(restored)
        if plan.to == Kind.ACTIVATION and plan.todo:
            enforce_activation_budget(ctx, keep={i.row.memory_id for i in plan.todo})
        return MemoryList(memories=tuple(to_memory(ctx, r) for r in [*out, *plan.unchanged]))

    def abort(self, ctx: CallContext, plan: MigratePlan | GroupPlan) -> None:
        if isinstance(plan, GroupPlan):
            return abort_group(ctx, plan)
        kernel = ctx.kernel
        now = kernel.clock.now()
        for item in plan.todo:
            kernel.store.journal_end(item.journal, "rolled_back", now, "failed before commit")
            if item.path is not None:
                ctx.after_commit(lambda p=item.path: delete_blob(kernel, p))


# ------------------------------------------------------------------------------------------------ recovery

def recover_migrations(kernel: Kernel, ctx: CallContext) -> None:
    """Roll back migrations a crash interrupted and delete payload files nothing references."""
    store = kernel.store

    def recover() -> list[str]:
        rolled = []
        now = kernel.clock.now()
        for seq, memory_id, _from_version, _to_kind, path in store.open_migrations():
            store.journal_end(seq, "rolled_back", now, "interrupted (process ended mid-migration)")
            if path:
                ctx.after_commit(lambda p=Path(path): p.unlink(missing_ok=True))
            cube = store.memory_cube(memory_id)
            ctx.emit(ev.MigrationRolledBack(cube=cube, memory_id=memory_id, principal="system", journal=seq))
            rolled.append(memory_id)
        return rolled

    rolled = kernel.in_transaction(ctx, recover)
    # A payload lives as long as a version that can become current again references it (memos.kernel.versions):
    # only files no version references are garbage.
    referenced = store.all_payload_paths()
    orphans = [p for d in ("activation", "parametric") for p in (kernel.blob_dir / d).glob("*") if str(p) not in referenced]
    for path in orphans:
        path.unlink(missing_ok=True)
    if rolled or orphans:
        kernel.log.warning("recovered interrupted migrations", rolled_back=rolled, orphan_blobs=len(orphans))


__all__ = ["ActivationBudget", "MigrateOp", "recover_migrations"]
