"""Observability syscalls: stats, events, the audit log, snapshots, and the jobs table (list, cancel)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from memos import syscalls as sc
from memos.errors import InvalidState, InvalidSyscall, NotFound, PermissionDenied
from memos.kernel.authz import job_view, readable_cubes, require_cube, target_admin
from memos.kernel.context import CallContext
from memos.kernel.reads import join_pending_reads
from memos.kernel.versions import to_memory
from memos.types import (
    AuditList,
    AuditRecord,
    Event,
    EventList,
    Job,
    JobList,
    KernelState,
    Right,
    State,
    Stats,
    from_epoch,
)


def stats(ctx: CallContext, call: sc.GetStats) -> Stats:
    """Counts over the cubes the caller may read; syscall figures server-wide for superusers, else of those cubes
    only (``memos.kernel.callstats``)."""
    kernel = ctx.kernel
    cubes = readable_cubes(ctx)
    memories: dict[str, dict[str, int]] = {}
    size: Counter[str] = Counter()
    for _, kind, state, n, b in kernel.store.counts(cubes):
        memories.setdefault(kind, {}).setdefault(state, 0)
        memories[kind][state] += n
        size[kind] += b
    calls, latency = kernel.call_stats.view(None if ctx.principal in kernel.superusers else cubes)
    return Stats(
        cubes=len(cubes), memories=memories, versions=kernel.store.version_count(cubes), bytes=dict(size),
        syscalls=calls, latency_ms=latency,
    )


def events(ctx: CallContext, call: sc.GetEvents) -> EventList:
    if isinstance(call.since, str):
        raise InvalidSyscall(f"since={call.since!r} is a cursor over kernel shards; this kernel's cursor is its "
                             "event sequence number (an int)")
    if ctx.principal in ctx.kernel.superusers and not call.cubes:
        cubes = None
    else:
        readable = set(readable_cubes(ctx))
        for cube in call.cubes:
            require_cube(ctx, cube, Right.READ)
        cubes = [c for c in (call.cubes or sorted(readable)) if c in readable]
    rows = ctx.kernel.store.events(call.since, call.limit, cubes, call.types, call.latest)
    found = tuple(
        Event(seq=r.seq, at=from_epoch(r.at), type=r.type, cube=r.cube, memory_id=r.memory_id, principal=r.principal,
              data=json.loads(r.data), incarnation=r.incarnation)
        for r in rows
    )
    next_seq = found[-1].seq if found else max(call.since, 0)
    return EventList(events=found, next_seq=next_seq)


def jobs(ctx: CallContext, call: sc.ListJobs) -> JobList:
    listed = [v for v in (job_view(ctx, j) for j in ctx.kernel.jobs.all()) if v is not None]
    if call.running_only:
        listed = [j for j in listed if j.state == "running"]
    return JobList(jobs=tuple(listed))


def cancel(ctx: CallContext, call: sc.CancelJob) -> Job:
    """Its starter, superusers, whoever may write every cube it touches, and the admins of a distillation's target
    cube may cancel a job (a queued one leaves the queue)."""
    handle = ctx.kernel.jobs.get(call.job_id)
    job = handle.snapshot()
    if job_view(ctx, job) is None:
        raise NotFound(f"no job {call.job_id}", job_id=call.job_id)  # existence concealed, as for memories
    if ctx.principal != job.principal and ctx.principal not in ctx.kernel.superusers and not target_admin(ctx, job):
        for cube in job.cubes:
            require_cube(ctx, cube, Right.WRITE)
    if job.state != "running":
        raise InvalidState(f"job {job.id} has already ended ({job.state})", job_id=job.id, state=job.state)
    handle.request_cancel(ctx.principal)
    ctx.audit_ok("cancel", job.cubes[0] if job.cubes else None, job.target,
                 detail=f"{job.id} ({job.op}, started by {job.principal})")
    return job_view(ctx, handle.snapshot())  # type: ignore[return-value]


def snapshot(ctx: CallContext, call: sc.Snapshot) -> KernelState:
    store = ctx.kernel.store
    cubes = list(dict.fromkeys(call.cubes)) or [c.name for c in store.list_cubes()]
    for cube in cubes:
        require_cube(ctx, cube, Right.ADMIN)
    join_pending_reads(ctx)  # policies count reads: they see every read made so far
    now = ctx.kernel.clock.now()
    rows = [r for r in store.current_memories(cubes) if r.state != State.DELETED]
    activation = sum(r.payload["size_bytes"] for r in store.current_of_kind("activation") if r.payload)
    return KernelState(
        at=from_epoch(now), memories=tuple(to_memory(ctx, r) for r in rows),
        read_times={k: tuple(v) for k, v in store.read_times(cubes, now - call.read_window_s).items()},
        activation_bytes=activation,
    )


def audit(ctx: CallContext, call: sc.GetAudit) -> AuditList:
    if call.cube is None:
        if ctx.principal not in ctx.kernel.superusers:
            raise PermissionDenied(f"{ctx.principal} may read the audit log of a cube it administers; name the cube",
                                   right="admin")
    else:
        require_cube(ctx, call.cube, Right.ADMIN)
    if isinstance(call.since, str):
        raise InvalidSyscall(f"since={call.since!r} is a cursor over kernel shards; this kernel's cursor is its "
                             "audit sequence number (an int)")
    rows = ctx.kernel.store.audit_records(call.cube, call.since, call.limit)
    return AuditList(records=tuple(
        AuditRecord(seq=r.seq, at=from_epoch(r.at), principal=r.principal, op=r.op, cube=r.cube,
                    memory_id=r.memory_id, outcome=r.outcome, detail=r.detail, incarnation=r.incarnation)
        for r in rows
    ), next_since=rows[-1].seq if rows else call.since)


HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {
    sc.GetStats: stats,
    sc.GetEvents: events,
    sc.ListJobs: jobs,
    sc.CancelJob: cancel,
    sc.Snapshot: snapshot,
    sc.GetAudit: audit,
}
