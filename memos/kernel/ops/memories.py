"""Memory syscalls: write, read, list, update, the lifecycle (delete, archive, restore, purge), history, links,
fuse and pins (``rollback``, which may rebuild a cache, is a long operation: ``memos.kernel.ops.rollback``). Every
change is a new version (``memos.kernel.versions``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from memos import syscalls as sc
from memos.cubes.plaintext import check_content, check_metadata
from memos.errors import InvalidState, InvalidSyscall
from memos.kernel import events as ev
from memos.kernel import idempotency
from memos.kernel.authz import policy_rule, require_cube, require_memory
from memos.kernel.context import CallContext
from memos.kernel.reads import audit_read, record_reads
from memos.kernel.versions import (
    check_expected,
    delete_blob,
    derived_provenance,
    first_version,
    next_version,
    to_memory,
    weakest,
)
from memos.storage.sqlite import VersionRow
from memos.types import Ack, Memory, MemoryList, MemoryRef, Provenance, Right, Source, State, initial_trust


def _parents(ctx: CallContext, refs: Iterable[MemoryRef]) -> list[VersionRow]:
    return [require_memory(ctx, ref.id, Right.READ, ref.version) for ref in refs]


def write(ctx: CallContext, call: sc.Write) -> Memory:
    require_cube(ctx, call.cube, Right.WRITE)
    if (done := idempotency.replayed(ctx.kernel.store, ctx.principal, call, lambda r: to_memory(ctx, r))) is not None:
        return done  # a retry of a write that committed: the memory it wrote, not a second one
    check_content(call.content)
    check_metadata(call.metadata)
    parents = _parents(ctx, call.derived_from)
    trust = weakest([initial_trust(call.source, call.trust), *(p.provenance.get("trust", "trusted") for p in parents)])
    now = ctx.kernel.clock.now()
    memory_id = ctx.kernel.new_id()
    provenance = Provenance(
        author=ctx.principal, source=call.source, source_refs=call.source_refs, derived_from=call.derived_from,
        operation="write", trust=trust,
    )
    row = first_version(
        ctx, memory_id=memory_id, cube=call.cube, kind="plaintext", provenance=provenance, content=call.content,
        metadata=call.metadata, tags=tuple(dict.fromkeys(call.tags)), at=now,
    )
    idempotency.remember(ctx.kernel.store, ctx.principal, call, memory_id, 1, now)
    ctx.audit_ok(call.op, call.cube, memory_id)
    ctx.emit(ev.Written(cube=call.cube, memory_id=memory_id, principal=ctx.principal, version=1, trust=trust.value))
    return to_memory(ctx, row)


def read(ctx: CallContext, call: sc.Read) -> Memory:
    row = require_memory(ctx, call.id, Right.READ, call.version)
    store = ctx.kernel.store
    record_reads(ctx, [row.memory_id], ctx.kernel.clock.now())
    audit_read(ctx, call.op, row.cube, row.memory_id, detail=f"v{row.version}")
    return to_memory(ctx, store.get_version(row.memory_id, row.version))  # type: ignore[arg-type]


def list_memories(ctx: CallContext, call: sc.ListMemories) -> MemoryList:
    require_cube(ctx, call.cube, Right.READ)
    rows = ctx.kernel.store.list_memories(call.cube, tuple(s.value for s in call.states), call.limit, call.offset,
                                          tuple(call.tags))
    audit_read(ctx, call.op, call.cube, detail=f"{len(rows)} memories")
    return MemoryList(memories=tuple(to_memory(ctx, r) for r in rows))


def update(ctx: CallContext, call: sc.Update) -> Memory:
    row = require_memory(ctx, call.id, Right.WRITE)
    check_expected(row, call.expected_version)
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
    provenance = derived_provenance(
        row, author=ctx.principal, source_refs=call.source_refs, operation="update", policy_rule=policy_rule(ctx, call),
    )
    new = next_version(ctx, row, provenance, content=content, metadata=metadata, tags=tags)
    ctx.audit_ok(call.op, row.cube, row.memory_id, detail=f"v{new.version}")
    ctx.emit(ev.Updated(cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, version=new.version))
    return to_memory(ctx, new)


def _transition(ctx: CallContext, call: Any, *, to: State, allowed_from: tuple[State, ...],
                event: type[ev.Deleted | ev.Archived | ev.Restored]) -> Memory:
    row = require_memory(ctx, call.id, Right.WRITE)
    check_expected(row, getattr(call, "expected_version", None))
    if State(row.state) not in allowed_from:
        raise InvalidState(
            f"memory {row.memory_id} is {row.state}; {call.op} needs it to be {' or '.join(s.value for s in allowed_from)}",
            memory_id=row.memory_id, state=row.state,
        )
    provenance = derived_provenance(
        row, author=ctx.principal, operation=call.op, source_refs=(), policy_rule=policy_rule(ctx, call),
    )
    new = next_version(ctx, row, provenance, state=to)
    ctx.audit_ok(call.op, row.cube, row.memory_id, detail=f"v{new.version}")
    ctx.emit(event(cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, version=new.version,
                   rule=provenance.policy_rule))
    return to_memory(ctx, new)


def delete(ctx: CallContext, call: sc.Delete) -> Memory:
    return _transition(ctx, call, to=State.DELETED, allowed_from=(State.ACTIVE, State.ARCHIVED), event=ev.Deleted)


def archive(ctx: CallContext, call: sc.Archive) -> Memory:
    return _transition(ctx, call, to=State.ARCHIVED, allowed_from=(State.ACTIVE,), event=ev.Archived)


def restore(ctx: CallContext, call: sc.Restore) -> Memory:
    return _transition(ctx, call, to=State.ACTIVE, allowed_from=(State.DELETED, State.ARCHIVED), event=ev.Restored)


def purge(ctx: CallContext, call: sc.Purge) -> Ack:
    row = require_memory(ctx, call.id, Right.WRITE)
    rule = policy_rule(ctx, call)
    kernel, store = ctx.kernel, ctx.kernel.store
    history = store.history(call.id)
    children = [c for c, _ in store.children_of(call.id) if c != call.id]
    store.purge_memory(call.id)
    ctx.after_commit(store.erase_freed)
    for path in {v.payload["path"] for v in history if v.payload}:
        ctx.after_commit(lambda p=Path(path): delete_blob(kernel, p))
    now = kernel.clock.now()
    for child in children:
        store.set_stale(child, True)
        ctx.emit(ev.Stale(
            cube=store.memory_cube(child), memory_id=child, principal=ctx.principal, source=call.id, purged=True,
        ))
    ctx.audit_ok(call.op, row.cube, call.id, detail=f"purged {len(history)} versions")
    ctx.emit(ev.Purged(
        cube=row.cube, memory_id=call.id, principal=ctx.principal, versions=len(history), rule=rule, at=now,
    ))
    return Ack(detail=f"purged {call.id}: {len(history)} versions; {len(children)} derived memories marked stale")


def history(ctx: CallContext, call: sc.History) -> MemoryList:
    row = require_memory(ctx, call.id, Right.READ)
    audit_read(ctx, call.op, row.cube, row.memory_id)
    return MemoryList(memories=tuple(to_memory(ctx, r) for r in ctx.kernel.store.history(call.id)))


def link(ctx: CallContext, call: sc.LinkMemories) -> Ack:
    source = require_memory(ctx, call.source, Right.WRITE)
    require_memory(ctx, call.target, Right.READ)
    ctx.kernel.store.add_link(call.source, call.target, call.relation, ctx.principal, ctx.kernel.clock.now())
    ctx.audit_ok(call.op, source.cube, call.source, detail=f"{call.relation}->{call.target}")
    ctx.emit(ev.Linked(
        cube=source.cube, memory_id=call.source, principal=ctx.principal, target=call.target, relation=call.relation,
    ))
    return Ack(detail=f"{call.source} -{call.relation}-> {call.target}")


def fuse(ctx: CallContext, call: sc.Fuse) -> Memory:
    require_cube(ctx, call.cube, Right.WRITE)
    check_content(call.content)
    check_metadata(call.metadata)
    if len(set(call.ids)) != len(call.ids):
        raise InvalidSyscall("fuse needs distinct memory ids")
    needed = Right.READ if call.keep_sources else Right.WRITE
    sources = [require_memory(ctx, i, needed) for i in call.ids]
    for s in sources:
        if s.state != State.ACTIVE:
            raise InvalidState(f"memory {s.memory_id} is {s.state}; only active memories can be fused", memory_id=s.memory_id)
    now = ctx.kernel.clock.now()
    refs = tuple(MemoryRef(id=s.memory_id, version=s.version) for s in sources)
    rule = policy_rule(ctx, call)
    provenance = Provenance(
        author=ctx.principal, source=Source.DERIVED, derived_from=refs, operation="fuse", policy_rule=rule,
        trust=weakest(s.provenance.get("trust", "trusted") for s in sources),
    )
    memory_id = ctx.kernel.new_id()
    row = first_version(
        ctx, memory_id=memory_id, cube=call.cube, kind="plaintext", provenance=provenance, content=call.content,
        metadata=call.metadata, tags=tuple(dict.fromkeys(call.tags)), at=now,
    )
    if not call.keep_sources:
        for s in sources:
            retired = derived_provenance(
                s, author=ctx.principal, operation="fuse:retired", source_refs=(memory_id,), policy_rule=rule,
            )
            next_version(ctx, s, retired, at=now, state=State.ARCHIVED)
    ctx.audit_ok(call.op, call.cube, memory_id, detail=",".join(call.ids))
    ctx.emit(ev.Fused(cube=call.cube, memory_id=memory_id, principal=ctx.principal, sources=list(call.ids)))
    return to_memory(ctx, row)


def _set_pin(ctx: CallContext, call: Any, pinned: bool) -> Memory:
    row = require_memory(ctx, call.id, Right.WRITE)
    rule = policy_rule(ctx, call)
    store = ctx.kernel.store
    store.set_pinned(row.memory_id, pinned)
    ctx.audit_ok(call.op, row.cube, row.memory_id)
    event = ev.Pinned if pinned else ev.Unpinned
    ctx.emit(event(cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, rule=rule))
    return to_memory(ctx, store.get_version(row.memory_id))  # type: ignore[arg-type]


def pin(ctx: CallContext, call: sc.Pin) -> Memory:
    return _set_pin(ctx, call, True)


def unpin(ctx: CallContext, call: sc.Unpin) -> Memory:
    return _set_pin(ctx, call, False)


HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {
    sc.Write: write,
    sc.Read: read,
    sc.ListMemories: list_memories,
    sc.Update: update,
    sc.Delete: delete,
    sc.Archive: archive,
    sc.Restore: restore,
    sc.Purge: purge,
    sc.History: history,
    sc.LinkMemories: link,
    sc.Fuse: fuse,
    sc.Pin: pin,
    sc.Unpin: unpin,
}
