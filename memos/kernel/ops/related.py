"""``related``: what links a memory (stored links, provenance both ways, session neighbours, same subject).

Only memories the caller may read are listed. ``search(expand=N)`` uses the same links (``memos.kernel.ops.search``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memos import syscalls as sc
from memos.kernel.authz import allows, require_memory, right_on
from memos.kernel.context import CallContext
from memos.kernel.versions import to_memory
from memos.types import LinkElsewhere, RelatedList, RelatedMemory, Right, State

if TYPE_CHECKING:
    from memos.storage.sqlite import VersionRow


def related_rows(ctx: CallContext, row: VersionRow,
                 elsewhere: list[tuple[int, str, str, str]] | None = None) -> list[tuple[VersionRow, str, str]]:
    """(memory, relation, direction) for every memory linked to ``row``, strongest relations first. A linked id
    that is not on this kernel (on another kernel shard since a move, or purged) is skipped, and noted in
    ``elsewhere`` when given, as (how many found memories come before it, id, relation, direction)."""
    store = ctx.kernel.store
    found: list[tuple[str, str, str]] = []
    for source, target, relation, _, _ in store.links_of(row.memory_id):
        found.append((target, relation, "out") if source == row.memory_id else (source, relation, "in"))
    for ref in row.provenance.get("derived_from", ()):
        found.append((ref["id"], "derived_from", "out"))
    for child, _ in store.children_of(row.memory_id):
        if child != row.memory_id:
            found.append((child, "derived", "in"))
    for other in store.session_neighbours(row):
        found.append((other.memory_id, "same_session", "both"))
    for other in store.same_subject(row):
        found.append((other.memory_id, "same_subject", "both"))
    out: list[tuple[VersionRow, str, str]] = []
    seen = {row.memory_id}
    for memory_id, relation, direction in found:
        if memory_id in seen:
            continue
        other = store.get_version(memory_id)
        if other is None:
            if elsewhere is not None:
                seen.add(memory_id)
                elsewhere.append((len(out), memory_id, relation, direction))
            continue
        if not allows(right_on(ctx.kernel, ctx.principal, other.cube), Right.READ):
            continue
        seen.add(memory_id)
        out.append((other, relation, direction))
    return out


def related(ctx: CallContext, call: sc.Related) -> RelatedList:
    row = require_memory(ctx, call.id, Right.READ)
    away: list[tuple[int, str, str, str]] = []
    listed = related_rows(ctx, row, away)
    items, index = [], {}  # index: position in listed -> position in items
    for i, (other, relation, direction) in enumerate(listed):
        index[i] = len(items)
        if (call.include_inactive or other.state == State.ACTIVE) and (not call.relations or relation in call.relations):
            items.append(RelatedMemory(memory=to_memory(ctx, other), relation=relation, direction=direction))  # type: ignore[arg-type]
    elsewhere = tuple(
        LinkElsewhere(position=index.get(before, len(items)), id=memory_id, relation=relation, direction=direction)  # type: ignore[arg-type]
        for before, memory_id, relation, direction in away
        if (not call.relations or relation in call.relations) and index.get(before, len(items)) < call.k)
    ctx.audit_ok(call.op, row.cube, row.memory_id, detail=f"{min(len(items), call.k)} related")
    return RelatedList(related=tuple(items[: call.k]), elsewhere=elsewhere)


HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {sc.Related: related}
