"""``distill(ids, cube)``: parametric memory, one adapter trained on a set of memories.

A long operation (``memos.kernel.longops``): *plan* (checks; the journal row of the adapter file), *work* (the model
host trains the adapter; the kernel is not held; progress goes into the job and a cancellation is forwarded),
*commit* (a new parametric memory, or the next version of the one ``replaces`` names, retrained on the current
versions of its sources), *abort* (the journal row rolled back, the file deleted).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.errors import (
    Cancelled,
    CapacityExceeded,
    InvalidState,
    InvalidSyscall,
    MemosError,
    VersionConflict,
    error_from_wire,
)
from memos.kernel import events as ev
from memos.kernel.authz import policy_rule, require_cube, require_memory
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation, require_model
from memos.kernel.versions import check_expected, delete_blob, first_version, next_version, to_memory
from memos.syscalls import MAX_METADATA_BYTES
from memos.types import DistillRecipe, Kind, MemoryRef, Provenance, Right, State

if TYPE_CHECKING:
    from memos.kernel.jobs import RunningJob
    from memos.models.port import DistillStatus
    from memos.storage.sqlite import VersionRow


@dataclass
class DistillPlan:
    memory_id: str
    cube: str
    path: Path
    journal: int
    sources: list[VersionRow]
    rule: str | None
    replaces: VersionRow | None = None  # retraining: the parametric memory that gets the new version
    attempts: list[dict[str, Any]] = field(default_factory=list)  # each recipe tried: its evaluation, gate misses


#: What the parametric memory's metadata keeps of each evaluation (the whole one is in the adapter's header).
SUMMARY = ("facts", "steps", "recall_with", "recall_without", "held_out_recall_with", "held_out_recall_without",
            "locality_delta", "train_s", "final_loss")


class DistillOp(LongOperation):
    def plan(self, ctx: CallContext, call: Any) -> DistillPlan:
        kernel = ctx.kernel
        require_model(ctx, "distill")
        rule = policy_rule(ctx, call)
        replaces, ids, cube = None, call.ids, call.cube
        if call.replaces is not None:
            replaces = require_memory(ctx, call.replaces, Right.WRITE)
            if replaces.kind != Kind.PARAMETRIC or replaces.state == State.DELETED:
                raise InvalidState(f"memory {replaces.memory_id} is a {replaces.state} {replaces.kind} memory; replaces "
                                   "names a parametric memory to retrain", memory_id=replaces.memory_id)
            if cube is not None and cube != replaces.cube:
                raise InvalidSyscall(f"memory {replaces.memory_id} is in cube {replaces.cube!r}, not {cube!r}")
            cube = replaces.cube
            if not ids:  # retrain on what it was trained on, at the current versions; what was deleted is forgotten
                refs = dict.fromkeys(ref["id"] for ref in replaces.provenance.get("derived_from", ()))
                # Rights first, state after: a source in a cube the caller cannot read is NotFound whatever its
                # state (concealed like any unreadable memory); a purged one is forgotten.
                rows = [require_memory(ctx, m, Right.READ) for m in refs if kernel.store.memory_cube(m) is not None]
                ids = tuple(r.memory_id for r in rows if r.state == State.ACTIVE)
                if not ids:
                    raise InvalidState(f"no source of {replaces.memory_id} is active any more; delete it instead",
                                       memory_id=replaces.memory_id)
        assert cube is not None  # the syscall's validator: cube or replaces
        require_cube(ctx, cube, Right.WRITE)
        sources = [require_memory(ctx, m, Right.READ) for m in dict.fromkeys(ids)]
        for steps in (call.steps, *(r.steps for r in call.recipes)):  # a recipe's steps are bounded the same
            if steps is not None and steps > kernel.distill_max_steps:
                raise InvalidSyscall(f"distill takes at most {kernel.distill_max_steps} steps on this server, not "
                                     f"{steps} (a bound per job, so that no caller holds the trainer for hours)",
                                     steps=steps, limit=kernel.distill_max_steps)
        if call.expected_versions is not None:
            for memory_id, expected in zip(call.ids, call.expected_versions, strict=True):
                check_expected(next(r for r in sources if r.memory_id == memory_id), expected)
        for row in sources:
            if row.state != State.ACTIVE or row.kind == Kind.PARAMETRIC:
                raise InvalidState(f"memory {row.memory_id} is a {row.state} {row.kind} memory; distill takes active "
                                   "plaintext or activation memories", memory_id=row.memory_id)
            if row.provenance.get("trust") == "untrusted" and not call.allow_untrusted:
                raise InvalidSyscall(
                    f"memory {row.memory_id} is untrusted (source {row.provenance.get('source')}); untrusted memories "
                    "are not distilled into parametric memory unless allow_untrusted is set", memory_id=row.memory_id,
                )
        memory_id = replaces.memory_id if replaces is not None else kernel.new_id()
        version = replaces.current_version + 1 if replaces is not None else 1
        path = kernel.blob_dir / "parametric" / f"{memory_id}-v{version}.adapter.safetensors"
        journal = kernel.store.journal_start(memory_id, version - 1, Kind.PARAMETRIC.value, str(path), rule,
                                             ctx.principal, kernel.clock.now())
        return DistillPlan(memory_id, cube, path, journal, sources, rule, replaces)

    def job_args(self, plan: DistillPlan) -> dict[str, Any]:
        # The target cube first: its admins may cancel the job (memos.kernel.authz.job_view).
        return {"cubes": [plan.cube, *(r.cube for r in plan.sources)], "memory_ids": [r.memory_id for r in plan.sources],
                "target": plan.memory_id, "rule": plan.rule, "phase": "queued"}

    def work(self, ctx: CallContext, call: Any, plan: DistillPlan, job: RunningJob | None) -> DistillStatus:
        """Wait for a turn (``memos.kernel.distill_queue``), then train with each recipe in turn until one's
        evaluation passes the gate (the last one's adapter is kept otherwise); every attempt goes into
        ``plan.attempts``."""
        facts = [{"id": r.memory_id, "version": r.version, "text": r.content} for r in plan.sources]
        # Activation memories are distilled from their cached context (the model with the memory in front is the
        # teacher) unless the recipe says otherwise; plaintext memories from their text.
        teacher = {"teacher": "context"} if all(r.kind == Kind.ACTIVATION for r in plan.sources) else {}
        with ctx.kernel.distill_queue.turn(ctx.principal, job):
            for recipe in call.recipes or (DistillRecipe(),):
                config = {**teacher, **recipe.overrides(), **({"steps": call.steps} if call.steps else {})}
                status = self._train(ctx, facts, str(plan.path), config, job)
                evaluation = status.evaluation or {}
                misses = call.gate.misses(evaluation)
                plan.attempts.append({"recipe": recipe.overrides(), "reasons": list(misses),
                                      **{k: evaluation.get(k) for k in SUMMARY}})
                if not misses:
                    break
            return status

    def _train(self, ctx: CallContext, facts: list[dict[str, Any]], path: str, config: dict[str, Any],
               job: RunningJob | None) -> DistillStatus:
        model = require_model(ctx, "distill")
        return follow_host_job(ctx, lambda: model.start_distill(facts, path, config), job)

    def commit(self, ctx: CallContext, call: Any, plan: DistillPlan, built: Any) -> Any:
        from memos.syscalls import MAX_CONTENT_BYTES

        kernel, store = ctx.kernel, ctx.kernel.store
        now = kernel.clock.now()
        previous = None
        if plan.replaces is not None:
            previous = store.get_version(plan.memory_id)
            if previous is None or previous.version != plan.replaces.version:
                raise VersionConflict(f"memory {plan.memory_id} changed while it was being retrained; nothing was kept",
                                      memory_id=plan.memory_id, expected=plan.replaces.version)
        for row in plan.sources:
            current = store.get_version(row.memory_id)
            if current is None or current.version != row.version:
                raise VersionConflict(f"memory {row.memory_id} changed while it was being distilled; nothing was kept",
                                      memory_id=row.memory_id, expected=row.version)
        # The text of what the adapter knows: searchable, and the knowledge that survives the adapter. Only the
        # sources of the adapter's own cube are copied: another cube's text stays in its cube (its readers are not
        # this cube's), named by count and cube.
        content = "\n".join(r.content for r in plan.sources if r.cube == plan.cube)
        elsewhere = Counter(r.cube for r in plan.sources if r.cube != plan.cube)
        if elsewhere:
            where = ", ".join(f"{n} from {cube}" for cube, n in sorted(elsewhere.items()))
            content += ("\n" if content else "") + f"[also trained on memories whose text stays in their cubes: {where}]"
        if len(content.encode("utf-8")) > MAX_CONTENT_BYTES:
            content = content.encode("utf-8")[: MAX_CONTENT_BYTES - 64].decode("utf-8", "ignore") + "\n[...]"
        evaluation = built.evaluation or {}
        provenance = Provenance(
            author=ctx.principal, source="derived", operation="distill", policy_rule=plan.rule,
            derived_from=tuple(MemoryRef(id=r.memory_id, version=r.version) for r in plan.sources),
            trust="untrusted" if any(r.provenance.get("trust") == "untrusted" for r in plan.sources) else "trusted",
        )
        misses = call.gate.misses(evaluation)
        own = {r.memory_id for r in plan.sources if r.cube == plan.cube}
        fingerprint = (built.fingerprint or kernel.model.fingerprint()).model_dump()  # type: ignore[union-attr]
        metadata = {
            "distill": {k: evaluation.get(k) for k in SUMMARY},
            # Adopted: assemble_context and generate use it in place of its sources (but its weak sources).
            "adoption": {"adopted": not misses, "reasons": list(misses), "gate": call.gate.model_dump(),
                         "weak_sources": list(evaluation.get("weak_sources") or ()), "attempts": plan.attempts,
                         "evaluated_on": fingerprint},
            # The trained questions the adapter answered right, about sources of its own cube (like its text: another
            # cube's stays there): they stand in for a source that is gone when the adapter goes back to text
            # (memos.kernel.ops.adapter_text).
            "answers": kept_answers(evaluation, own),
        }
        metadata = fit_answers(metadata)
        tags = tuple(dict.fromkeys(call.tags)) or (previous.tags if previous is not None else ())
        fields: dict[str, Any] = {
            "kind": Kind.PARAMETRIC.value, "content": content, "metadata": metadata, "tags": tags,
            "fingerprint": fingerprint,
            "payload": built.payload.model_dump(),
        }
        if previous is None:
            row = first_version(ctx, memory_id=plan.memory_id, cube=plan.cube, provenance=provenance, at=now, **fields)
        else:
            row = next_version(ctx, previous, provenance, at=now, state=State.ACTIVE, **fields)
        if previous is not None and previous.stale:
            store.set_stale(plan.memory_id, False)  # trained on its sources' current versions again
            row = store.get_version(plan.memory_id)  # type: ignore[assignment]
        store.journal_end(plan.journal, "done", now)
        ctx.audit_ok("distill", plan.cube, plan.memory_id,
                     detail=f"{len(plan.sources)} memories" + (f", v{row.version}" if previous is not None else ""))
        ctx.emit(ev.Distilled(
            cube=plan.cube, memory_id=plan.memory_id, principal=ctx.principal, rule=plan.rule,
            sources=len(plan.sources), version=row.version, recall_with=evaluation.get("recall_with"),
            recall_without=evaluation.get("recall_without"), locality_delta=evaluation.get("locality_delta"),
            bytes=built.payload.size_bytes, adopted=not misses, reasons=tuple(misses),
            loss_curve=ev.thin_curve(built.loss_curve) if built.loss_curve else None,
        ))
        return to_memory(ctx, row)

    def abort(self, ctx: CallContext, plan: DistillPlan) -> None:
        kernel = ctx.kernel
        kernel.store.journal_end(plan.journal, "rolled_back", kernel.clock.now(), "failed before commit")
        ctx.after_commit(lambda p=plan.path: delete_blob(kernel, p))


def follow_host_job(ctx: CallContext, begin: Callable[[], DistillStatus], job: RunningJob | None) -> DistillStatus:
    """A training (or re-evaluation) job on the model host, from ``begin()`` (which starts it) to its end: progress
    into ``job``, a cancellation forwarded, stopped at ``distill_max_s``. While the host is busy with another
    kernel's job (kernels that share one model host each have their own queue), wait for it, still cancellable,
    instead of failing. Returns the finished status (with its payload).

    Raises:
        Cancelled: cancelled, or past the time bound. InvalidState: ended without an adapter. The job's own typed
        error when it failed on the host.
    """
    kernel = ctx.kernel
    model = require_model(ctx, "distill")
    while True:
        try:
            status = begin()
            break
        except CapacityExceeded:
            if job is None:
                raise
            job.progress(0, 0, phase="queued")
            if job.wait_cancel(kernel.job_poll_s):
                job.raise_if_cancelled()
    deadline = time.monotonic() + kernel.distill_max_s
    cancel_sent = timed_out = False
    try:
        while status.state == "running":
            if job is None or cancel_sent:
                time.sleep(kernel.job_poll_s)
            elif job.wait_cancel(kernel.job_poll_s):
                model.cancel_distill(status.job_id)
                cancel_sent = True
            if not timed_out and time.monotonic() > deadline:
                model.cancel_distill(status.job_id)
                cancel_sent = timed_out = True
                break
            status = model.distill_status(status.job_id)
            if job is not None:
                job.progress(status.step, status.total, phase=status.phase, loss=status.loss)
    finally:
        try:
            model.forget_distill(status.job_id)  # cancels it if this kernel thread is leaving early
        except MemosError as exc:
            kernel.log.warning("could not forget a distillation job", job=status.job_id, error=exc.message)
    if timed_out:
        raise Cancelled(f"distillation {status.job_id} ran past its time bound of {kernel.distill_max_s:g} s "
                        "(distill_max_s) and was stopped; nothing was kept", limit_s=kernel.distill_max_s)
    if status.state == "done" and status.payload is not None:
        return status
    if status.state == "cancelled":
        if job is not None:
            job.raise_if_cancelled()
        raise Cancelled(f"the model host cancelled distillation {status.job_id}")
    if status.error:
        raise error_from_wire(status.error)
    raise InvalidState(f"distillation {status.job_id} ended {status.state} without an adapter")


def kept_answers(evaluation: dict[str, Any], own: set[str]) -> list[dict[str, str]]:
    """What a parametric memory keeps of its evaluation's answers (``metadata.answers``): the trained questions
    answered right about the sources in ``own`` (those of its own cube), which stand in for a deleted source when
    the adapter goes back to text (``memos.kernel.ops.adapter_text``)."""
    return [{"source": a["source"], "question": a["question"], "answer": a["reply"]}
            for a in evaluation.get("answers") or () if a.get("correct") and a["source"] in own]


def fit_answers(metadata: dict[str, Any], limit: int = MAX_METADATA_BYTES) -> dict[str, Any]:
    """``metadata`` with ``answers`` cut so that the whole is at most ``limit`` bytes of JSON (the metadata limit of
    docs/syscalls.md; an adapter of a hundred facts keeps ~35 KiB of answers otherwise).

    What is cut: answers are taken one source at a time (every source's first answer, then every source's second,
    ...), so a cut drops the later answers of sources that have several before it drops any source's only one;
    the kept ones stay in their order. A cut is marked: ``metadata["answers_truncated"] = {"kept": k, "of": n}``
    (the missing answers are still in the adapter's header: ``Evaluation.answers``)."""
    answers = list(metadata.get("answers") or ())

    def size(m: dict[str, Any]) -> int:
        return len(json.dumps(m, ensure_ascii=False, allow_nan=False).encode("utf-8"))

    if size(metadata) <= limit:
        return metadata
    rank: dict[str, int] = {}
    order = []
    for i, a in enumerate(answers):
        rank[a["source"]] = rank.get(a["source"], -1) + 1
        order.append((rank[a["source"]], i))
    order.sort()
    marker = {"kept": 0, "of": len(answers)}
    # The marker's own bytes are counted; the size of a kept answer is its JSON plus a separating comma.
    budget = limit - size({**metadata, "answers": [], "answers_truncated": {"kept": len(answers), "of": len(answers)}})
    kept: list[int] = []
    for _, i in order:
        cost = size(answers[i]) + 1
        if cost > budget:
            break
        budget -= cost
        kept.append(i)
    kept.sort()
    marker["kept"] = len(kept)
    return {**metadata, "answers": [answers[i] for i in kept], "answers_truncated": marker}
