"""``rollback(id, to_version)``: version n+1 with the content, metadata, tags and payload of an older version.

The kind stays, with one exception: a parametric memory that ``migrate(to="plaintext")`` archived as text rolls back
to an adapter version as an active adapter again (no other operation can make an adapter of text).

A rollback never commits a version that points at a missing file. The payload of the version it restores is
normally still on disk (payload lifetime follows versions, ``memos.kernel.versions``). When it is not:

- an **activation** cache evicted by the budget is rebuilt from the version's text by the model host, under a new
  file name; the rollback is then a long operation (*plan*: checks and a journal row; *work*: the model host builds
  the cache, the kernel is not held; *commit*: the version, then the activation budget; *abort*: the journal row
  rolled back and the file deleted). Without a model host the rollback is refused (``InvalidState``, naming the
  eviction);
- an **adapter** cannot be rebuilt exactly (retraining is not deterministic and takes minutes): the rollback is
  refused with ``InvalidState`` naming the missing file's version and the way out (``distill(replaces=...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.errors import InvalidState, NotFound, VersionConflict
from memos.kernel import events as ev
from memos.kernel.authz import require_memory
from memos.kernel.budget import enforce_activation_budget
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation
from memos.kernel.versions import check_expected, delete_blob, derived_provenance, next_version, to_memory
from memos.types import Kind, Memory, Right, State

if TYPE_CHECKING:
    from memos.kernel.jobs import RunningJob
    from memos.models.port import ActivationBuilt
    from memos.storage.sqlite import VersionRow


@dataclass
class RollbackPlan:
    row: VersionRow
    target: VersionRow
    rebuild: Path | None = None  # where the evicted cache of ``target`` is rebuilt
    journal: int | None = None


def _missing(payload: dict[str, Any] | None) -> bool:
    return payload is not None and not Path(payload["path"]).is_file()


class RollbackOp(LongOperation):
    def plan(self, ctx: CallContext, call: Any) -> RollbackPlan:
        kernel = ctx.kernel
        row = require_memory(ctx, call.id, Right.WRITE)
        check_expected(row, call.expected_version)
        if row.state == State.DELETED:
            raise InvalidState(f"memory {row.memory_id} is deleted; restore it before rolling back", memory_id=row.memory_id)
        target = kernel.store.get_version(call.id, call.to_version)
        if target is None:
            raise NotFound(f"memory {call.id} has no version {call.to_version}", memory_id=call.id, version=call.to_version)
        # Across kinds only back to an adapter: migrate(parametric -> plaintext) archived it as text, and nothing
        # but a rollback can make an adapter of text (memos.kernel.ops.adapter_text).
        if target.kind != row.kind and target.kind != Kind.PARAMETRIC:
            raise InvalidState(
                f"version {call.to_version} is {target.kind} and the memory is now {row.kind}; migrate instead",
                memory_id=call.id,
            )
        plan = RollbackPlan(row, target)
        if not _missing(target.payload):
            return plan
        if target.kind == Kind.PARAMETRIC:
            raise InvalidState(
                f"the adapter file of version {target.version} is missing (deleted outside memos); its weights cannot "
                f"be restored: retrain with distill(replaces={row.memory_id!r}) instead", memory_id=row.memory_id,
                version=target.version,
            )
        if kernel.model is None:
            raise InvalidState(
                f"the KV cache of version {target.version} was evicted (activation disk budget) and no model host is "
                "configured to rebuild it; roll back with a model host, or migrate the memory instead",
                memory_id=row.memory_id, version=target.version,
            )
        plan.rebuild = kernel.blob_dir / "activation" / f"{row.memory_id}-v{row.current_version + 1}.kv.safetensors"
        plan.journal = kernel.store.journal_start(row.memory_id, row.current_version, Kind.ACTIVATION.value,
                                                  str(plan.rebuild), None, ctx.principal, kernel.clock.now())
        return plan

    def job_args(self, plan: RollbackPlan) -> dict[str, Any] | None:
        if plan.rebuild is None:
            return None
        return {"cubes": [plan.row.cube], "memory_ids": [plan.row.memory_id], "total": 1,
                "phase": f"rebuild the cache of v{plan.target.version}"}

    def work(self, ctx: CallContext, call: Any, plan: RollbackPlan, job: RunningJob | None) -> ActivationBuilt | None:
        if plan.rebuild is None:
            return None
        built = ctx.kernel.model.build_activation(plan.target.content, str(plan.rebuild))  # type: ignore[union-attr]
        if job is not None:
            job.progress(1, 1)
        return built

    def commit(self, ctx: CallContext, call: Any, plan: RollbackPlan, built: ActivationBuilt | None) -> Memory:
        kernel = ctx.kernel
        row = kernel.store.get_version(plan.row.memory_id)
        if row is None or row.current_version != plan.row.current_version:
            raise VersionConflict(
                f"memory {plan.row.memory_id} changed while its rollback was prepared; nothing was rolled back",
                memory_id=plan.row.memory_id, expected=plan.row.current_version,
                current=None if row is None else row.current_version,
            )
        target = plan.target
        fingerprint, payload = target.fingerprint, target.payload
        if built is not None:
            fingerprint, payload = built.fingerprint.model_dump(), built.payload.model_dump()
        elif _missing(payload):  # evicted between plan and commit: refuse rather than point at nothing
            raise InvalidState(f"the payload of version {target.version} was evicted while the rollback was prepared; "
                               "try again", memory_id=row.memory_id, version=target.version)
        provenance = derived_provenance(
            target, author=ctx.principal, operation=f"rollback:v{call.to_version}", source_refs=(), policy_rule=None,
        )
        across = {"kind": target.kind, "state": State.ACTIVE} if target.kind != row.kind else {}
        new = next_version(ctx, row, provenance, content=target.content, metadata=target.metadata, tags=target.tags,
                           fingerprint=fingerprint, payload=payload, **across)
        if plan.journal is not None:
            kernel.store.journal_end(plan.journal, "done", kernel.clock.now())
        detail = f"v{new.version}=v{call.to_version}" + (", cache rebuilt" if built is not None else "")
        ctx.audit_ok(call.op, row.cube, row.memory_id, detail=detail)
        ctx.emit(ev.RolledBack(
            cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, version=new.version,
            to_version=call.to_version, rebuilt=built is not None,
        ))
        if built is not None:
            enforce_activation_budget(ctx, keep={row.memory_id})
        return to_memory(ctx, new)

    def abort(self, ctx: CallContext, plan: RollbackPlan) -> None:
        kernel = ctx.kernel
        if plan.journal is not None:
            kernel.store.journal_end(plan.journal, "rolled_back", kernel.clock.now(), "failed before commit")
        if plan.rebuild is not None:
            ctx.after_commit(lambda p=plan.rebuild: delete_blob(kernel, p))
