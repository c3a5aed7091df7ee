"""``write_many``: many new plaintext memories in one transaction.

Contract:
- one SQLite transaction for the whole call, so one commit (one fsync) however many items it holds; the call is
  acknowledged only after that commit, and then the vector index is brought up to date from the outbox as for any
  write: the indexer embeds the new texts in batches and feeds the index in one call (memos.kernel.indexer);
- each item is written under its own savepoint: an item that fails (invalid fields, no write right on its cube,
  content too large, a ``derived_from`` it may not read) is rolled back alone, audited as a failure, and reported in
  its place with its typed error; the other items are written. No item is ever half written;
- each memory gets version 1 with its own provenance (author the caller, operation ``write``), its own audit record
  and its own ``written`` event, exactly as a single ``write`` would;
- a failure of the transaction itself (the store) fails the whole call: nothing was written;
- an item may carry an ``idempotency_key`` (the Python client gives each one): an item resent after it committed
  answers with the memory it wrote and writes nothing (memos.kernel.idempotency), so a whole resent call is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memos import syscalls as sc
from memos.cubes.plaintext import check_content, check_metadata, content_hash
from memos.errors import InvalidSyscall, MemosError
from memos.kernel import events as ev
from memos.kernel import idempotency
from memos.kernel.authz import require_cube, require_memory
from memos.kernel.context import CallContext
from memos.kernel.reads import join_pending_reads
from memos.kernel.versions import weakest
from memos.types import Provenance, Right, State, WriteManyResult, WriteOutcome, initial_trust


def _parse_item(number: int, item: dict[str, Any]) -> sc.Write:
    """Raises: InvalidSyscall naming the item and the field."""
    data = dict(item)
    op = data.setdefault("op", "write")
    if op != "write":
        raise InvalidSyscall(f"item {number}: write_many items are writes, not {op!r}", item=number)
    try:
        call = sc.parse_syscall(data)
    except InvalidSyscall as exc:
        raise InvalidSyscall(f"item {number}: {exc.message}", item=number) from exc
    assert isinstance(call, sc.Write)
    return call


def write_many(ctx: CallContext, call: sc.WriteMany) -> WriteManyResult:
    kernel = ctx.kernel
    now = kernel.clock.now()
    join_pending_reads(ctx)  # here, not under an item's savepoint, which may roll back alone
    events, after = ctx.events, ctx.after_commit_work
    writable: set[str] = set()
    outcomes: list[WriteOutcome] = []
    for number, item in enumerate(call.items):
        events_mark, after_mark = len(events), len(after)
        cube = item.get("cube") if isinstance(item.get("cube"), str) else None
        try:
            with kernel.store.savepoint():
                write = _parse_item(number, item)
                cube = write.cube
                if cube not in writable:
                    require_cube(ctx, cube, Right.WRITE)
                    writable.add(cube)
                done = idempotency.replayed(kernel.store, ctx.principal, write, lambda row: row)
                if done is not None:  # a resent item that committed: its memory, not a second one
                    outcomes.append(WriteOutcome(id=done.memory_id, version=done.version))
                    continue
                memory_id = _write_item(ctx, write, now)
                idempotency.remember(kernel.store, ctx.principal, write, memory_id, 1, now)
        except MemosError as exc:
            del events[events_mark:], after[after_mark:]
            kernel.record_failure(ctx, call.op, cube, exc)  # joins this transaction
            wire = exc.to_wire()
            outcomes.append(WriteOutcome(error={**wire, "details": {**wire["details"], "item": number}}))
            continue
        outcomes.append(WriteOutcome(id=memory_id, version=1))
    written = sum(1 for o in outcomes if o.ok)
    return WriteManyResult(results=tuple(outcomes), written=written, failed=len(outcomes) - written)


def _write_item(ctx: CallContext, call: sc.Write, now: float) -> str:
    """One new memory at version 1 (what ``write`` does, without reading the row back). Returns its id.

    Raises:
        MemosError: the item is refused (the caller rolls its savepoint back).
    """
    kernel = ctx.kernel
    check_content(call.content)
    check_metadata(call.metadata)
    parents = [require_memory(ctx, ref.id, Right.READ, ref.version) for ref in call.derived_from]
    trust = weakest([initial_trust(call.source, call.trust), *(p.provenance.get("trust", "trusted") for p in parents)])
    memory_id = kernel.new_id()
    provenance = Provenance(
        author=ctx.principal, source=call.source, source_refs=call.source_refs, derived_from=call.derived_from,
        operation="write", trust=trust,
    )
    kernel.store.insert_memory(memory_id, call.cube, "plaintext", State.ACTIVE.value, now)
    kernel.store.append_version(
        memory_id=memory_id, version=1, cube=call.cube, kind="plaintext", state=State.ACTIVE.value,
        content=call.content, metadata=call.metadata, tags=tuple(dict.fromkeys(call.tags)),
        provenance=provenance.model_dump(mode="json"), content_hash=content_hash(call.content),
        size_bytes=len(call.content.encode("utf-8")), fingerprint=None, payload=None, at=now,
    )
    ctx.audit_ok("write", call.cube, memory_id, detail="write_many")
    ctx.emit(ev.Written(cube=call.cube, memory_id=memory_id, principal=ctx.principal, version=1, trust=trust.value))
    return memory_id


HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {sc.WriteMany: write_many}
