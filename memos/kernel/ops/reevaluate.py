"""``reevaluate(id)``: an adopted adapter meets a new base model.

An adapter is valid for the base model it was trained on (its fingerprint). When the model host comes up with
another fingerprint, the adapter is not used (``usable_adapter``: "trained on another base model"; the host refuses
it with ``FingerprintMismatch`` too), and the kernel re-evaluates it (``reevaluate_adapters``, started by
``memos.kernel.factory.open_kernel`` in a background thread; each one is this syscall, as ``system``).

A long operation (``memos.kernel.longops``), queued for the trainer like a distillation (``distill_queue``):

- *plan*: the memory is an active parametric memory with a payload, for another base model than the loaded one;
  the questions come from its sources at the versions it learnt (purged ones are left out); a journal row names the
  file of the re-stamped adapter;
- *work*: the model host evaluates the adapter on the loaded model (``ModelPort.start_reevaluate``,
  ``memos.models.reevaluate``) and writes the same factors re-stamped for it (its fingerprint, the new evaluation).
  An adapter that cannot be applied to the loaded model (another architecture: a module it adapts is missing or has
  other sizes; or its file is damaged) is an outcome too, not a failure;
- *commit*: version n+1 of the memory, with ``metadata.adoption.reevaluated`` (from which fingerprint, when, the
  outcome):
  - the evaluation passes the adapter's gate (``adoption.gate``): **adopted** on the new base: the re-stamped
    payload and fingerprint, the new evaluation (``metadata.distill``, ``weak_sources``, ``answers``);
  - it misses the gate: the re-stamped payload (it can be inspected, or named explicitly), **not adopted** with the
    reasons, and **stale**;
  - it cannot be applied: payload and fingerprint unchanged, **not adopted** with the reason, **stale**;

  stale, so that ``distill(replaces=id)`` retrains it on the new base, and a policy's ``distill`` rule no longer
  counts its sources as distilled (``memos.schedulers.engine``) and distils them again with its recipes and gate.
- *abort*: the journal row rolled back, the file deleted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos import syscalls as sc
from memos.errors import (
    CorruptPayload,
    FingerprintMismatch,
    InvalidState,
    InvalidSyscall,
    MemosError,
    VersionConflict,
)
from memos.kernel import events as ev
from memos.kernel.authz import policy_rule, require_memory
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation, require_model
from memos.kernel.ops.distill import SUMMARY, fit_answers, follow_host_job, kept_answers
from memos.kernel.versions import delete_blob, derived_provenance, next_version, to_memory
from memos.types import AdoptionGate, Kind, Right, State

if TYPE_CHECKING:
    from memos.kernel.jobs import RunningJob
    from memos.kernel.kernel import Kernel
    from memos.models.port import DistillStatus
    from memos.storage.sqlite import VersionRow
    from memos.types import Memory

#: Errors of the host that mean "this adapter cannot be applied to the loaded model": recorded, not raised.
_UNUSABLE = (InvalidSyscall, CorruptPayload, FingerprintMismatch)


@dataclass
class ReevaluatePlan:
    row: VersionRow
    facts: list[dict[str, Any]]
    path: Path
    journal: int
    rule: str | None
    fingerprint: dict[str, Any]  # the loaded model's


def needs_reevaluation(row: VersionRow, fingerprint: dict[str, Any] | None) -> bool:
    """An active adapter, adopted (or from before gating), built for another base model than ``fingerprint`` (None:
    any base model)."""
    return (row.kind == Kind.PARAMETRIC and row.state == State.ACTIVE and row.payload is not None
            and (fingerprint is None or row.fingerprint != fingerprint)
            and (row.metadata.get("adoption") or {}).get("adopted") is not False)


class ReevaluateOp(LongOperation):
    def plan(self, ctx: CallContext, call: Any) -> ReevaluatePlan:
        kernel = ctx.kernel
        model = require_model(ctx, "reevaluate")
        row = require_memory(ctx, call.id, Right.WRITE)
        if row.kind != Kind.PARAMETRIC or row.state != State.ACTIVE or row.payload is None:
            raise InvalidState(f"memory {row.memory_id} is a {row.state} {row.kind} memory; reevaluate takes an "
                               "active parametric memory", memory_id=row.memory_id)
        fingerprint = model.fingerprint().model_dump()
        if row.fingerprint == fingerprint:
            raise InvalidState(f"memory {row.memory_id} was evaluated on the loaded base model already; reevaluate is "
                               "for an adapter of another base model", memory_id=row.memory_id)
        facts = []
        for ref in row.provenance.get("derived_from", ()):
            if kernel.store.memory_cube(ref["id"]) is None:
                continue  # purged: forgotten, not asked about
            source = require_memory(ctx, ref["id"], Right.READ, ref["version"])
            facts.append({"id": source.memory_id, "version": source.version, "text": source.content})
        path = kernel.blob_dir / "parametric" / f"{row.memory_id}-v{row.current_version + 1}.adapter.safetensors"
        journal = kernel.store.journal_start(row.memory_id, row.current_version, Kind.PARAMETRIC.value, str(path),
                                             policy_rule(ctx, call), ctx.principal, kernel.clock.now())
        return ReevaluatePlan(row, facts, path, journal, policy_rule(ctx, call), fingerprint)

    def job_args(self, plan: ReevaluatePlan) -> dict[str, Any]:
        return {"cubes": [plan.row.cube], "memory_ids": [plan.row.memory_id], "target": plan.row.memory_id,
                "rule": plan.rule, "phase": "queued"}

    def work(self, ctx: CallContext, call: Any, plan: ReevaluatePlan, job: RunningJob | None) -> DistillStatus | str:
        """The finished host job, or why the adapter cannot be applied to the loaded model."""
        if not plan.facts:
            return "no source it learnt is left to ask about (all purged)"
        model = require_model(ctx, "reevaluate")
        adapter = dict(plan.row.payload or {})
        with ctx.kernel.distill_queue.turn(ctx.principal, job):
            try:
                return follow_host_job(ctx, lambda: model.start_reevaluate(plan.facts, adapter, str(plan.path)), job)
            except _UNUSABLE as exc:
                return exc.message

    def commit(self, ctx: CallContext, call: Any, plan: ReevaluatePlan, outcome: DistillStatus | str) -> Memory:
        kernel, store = ctx.kernel, ctx.kernel.store
        now = kernel.clock.now()
        row = store.get_version(plan.row.memory_id)
        if row is None or row.version != plan.row.version:
            raise VersionConflict(f"memory {plan.row.memory_id} changed while it was re-evaluated; nothing was kept",
                                  memory_id=plan.row.memory_id, expected=plan.row.version)
        adoption = dict(row.metadata.get("adoption") or {})
        try:
            gate = AdoptionGate.model_validate(adoption.get("gate") or {})
        except ValueError:
            gate = AdoptionGate()
        base = plan.fingerprint
        on = f"on base model {base['model_id']} ({base['dtype']})"
        record = {"from": row.fingerprint, "to": base, "at": now}
        metadata = dict(row.metadata)
        fields: dict[str, Any] = {}
        if isinstance(outcome, str):
            reasons = [f"cannot be applied {on}: {outcome}"]
            evaluation: dict[str, Any] = {}
            store.journal_end(plan.journal, "rolled_back", now, "the adapter cannot be applied to the loaded model")
            ctx.after_commit(lambda p=plan.path: delete_blob(kernel, p))
        else:
            evaluation = outcome.evaluation or {}
            reasons = [f"{on}: {m}" for m in gate.misses(evaluation)]
            fields = {"payload": outcome.payload.model_dump(),  # type: ignore[union-attr]
                      "fingerprint": (outcome.fingerprint.model_dump() if outcome.fingerprint else base)}
            own = {ref["id"] for ref in row.provenance.get("derived_from", ())
                   if store.memory_cube(ref["id"]) == row.cube}
            metadata |= {"distill": {k: evaluation.get(k) for k in SUMMARY},
                         "answers": kept_answers(evaluation, own)}
            metadata.pop("answers_truncated", None)  # of the answers just replaced
            adoption |= {"weak_sources": list(evaluation.get("weak_sources") or ()), "evaluated_on": fields["fingerprint"]}
            store.journal_end(plan.journal, "done", now)
        adopted = not reasons
        metadata["adoption"] = {**adoption, "adopted": adopted, "reasons": reasons,
                                "reevaluated": {**record, "adopted": adopted}}
        metadata = fit_answers(metadata)
        prov = derived_provenance(row, author=ctx.principal, operation="reevaluate", policy_rule=plan.rule,
                                  source_refs=())
        new = next_version(ctx, row, prov, at=now, metadata=metadata, **fields)
        if not adopted and not new.stale:
            store.set_stale(new.memory_id, True)  # out of date with the base model: retrain it (module docstring)
            ctx.emit(ev.Stale(cube=new.cube, memory_id=new.memory_id, source=new.memory_id,
                              source_version=new.version, base_model=base["model_id"]))
            new = store.get_version(new.memory_id)  # type: ignore[assignment]
        ctx.audit_ok("reevaluate", row.cube, row.memory_id,
                     detail=f"v{new.version} {'adopted' if adopted else 'not adopted'} {on}")
        ctx.emit(ev.Reevaluated(
            cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, rule=plan.rule, version=new.version,
            adopted=adopted, reasons=tuple(reasons), recall_with=evaluation.get("recall_with"),
            locality_delta=evaluation.get("locality_delta"),
        ))
        return to_memory(ctx, new)

    def abort(self, ctx: CallContext, plan: ReevaluatePlan) -> None:
        kernel = ctx.kernel
        kernel.store.journal_end(plan.journal, "rolled_back", kernel.clock.now(), "failed before commit")
        ctx.after_commit(lambda p=plan.path: delete_blob(kernel, p))


def adapters_for_another_base(kernel: Kernel) -> list[str]:
    """Ids of the adapters ``reevaluate_adapters`` re-evaluates: adopted, active, for another base model. Asks the
    model host for its fingerprint only when there is an adopted adapter at all (it may load the model)."""
    if kernel.model is None:
        return []
    with kernel.lock:
        rows = [r for r in kernel.store.current_of_kind(Kind.PARAMETRIC.value) if needs_reevaluation(r, None)]
    if not rows:
        return []
    fingerprint = kernel.model.fingerprint().model_dump()
    return [r.memory_id for r in rows if needs_reevaluation(r, fingerprint)]


def reevaluate_adapters(kernel: Kernel, stop: threading.Event | None = None) -> dict[str, Memory | MemosError]:
    """Re-evaluate, one after the other and as ``system``, every adopted adapter of another base model than the
    loaded one; each outcome by memory id (a failure is logged and the next one goes on). ``stop`` ends the pass
    between adapters (the kernel is closing). Meant for a background thread: it never raises."""
    outcomes: dict[str, Memory | MemosError] = {}
    try:
        ids = adapters_for_another_base(kernel)
    except Exception as exc:  # noqa: BLE001 -- a background pass: the kernel closed, or the model host is down
        _log_stopped(kernel, stop, "could not look for adapters to re-evaluate", error=repr(exc))
        return outcomes
    if ids:
        kernel.log.warning("base model changed: re-evaluating adopted adapters", adapters=len(ids))
    for memory_id in ids:
        if stop is not None and stop.is_set():
            break
        try:
            outcomes[memory_id] = kernel.execute("system", sc.Reevaluate(id=memory_id))  # type: ignore[assignment]
        except MemosError as exc:
            _log_stopped(kernel, stop, "re-evaluation failed", memory_id=memory_id, code=exc.code, error=exc.message)
            outcomes[memory_id] = exc
        except Exception as exc:  # noqa: BLE001 -- as above: the kernel closed under the pass
            _log_stopped(kernel, stop, "re-evaluation stopped", memory_id=memory_id, error=repr(exc))
            break
    return outcomes


def _log_stopped(kernel: Kernel, stop: threading.Event | None, message: str, **fields: Any) -> None:
    """An error of the pass: at error level, unless the kernel is closing (``stop`` set), where a closed store or
    model host under the pass is expected and logged at info."""
    if stop is not None and stop.is_set():
        kernel.log.info(f"{message} (kernel closing)", **fields)
    else:
        kernel.log.error(message, **fields)
