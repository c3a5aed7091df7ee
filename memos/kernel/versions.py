"""Versions: every change to a memory is a new immutable version with provenance; nothing is overwritten.

``first_version`` creates a memory with its version 1; ``next_version(ctx, row, provenance, **changes)`` writes
version n+1 of ``row``'s memory, carrying over every field that ``changes`` does not name (``kind``, ``state``,
``content``, ``metadata``, ``tags``, ``fingerprint``, ``payload``). Both enforce the activation invariant
(``settle_kind``: a current activation version is active and encodes exactly its content; any other change drops
the payload and demotes it to plaintext) and mark memories derived from an older version stale when the knowledge
changed (content, state, metadata or tags; not a change of kind alone).

**Payload lifetime follows versions, not kinds.** A KV-cache or adapter file lives as long as a version that can
become current again references it: a new version that stops using it (archive, update, demotion, retraining)
leaves the file in place, so ``rollback`` to that version finds it. Files are deleted by ``purge`` and
``drop_cube`` (every version's), by the activation budget (``memos.kernel.budget``: kept caches first), and by a
failed or interrupted migration (its own new file). A rollback to a version whose cache was evicted rebuilds it;
one whose file is missing otherwise is refused (``memos.kernel.ops.rollback``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.cubes.plaintext import content_hash
from memos.errors import VersionConflict
from memos.kernel import events as ev
from memos.types import Kind, Memory, Provenance, State, Trust, from_epoch

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.kernel.kernel import Kernel
    from memos.storage.sqlite import VersionRow

_CHANGEABLE = frozenset({"kind", "state", "content", "metadata", "tags", "fingerprint", "payload"})


def new_memory_id() -> str:
    return "m_" + uuid.uuid4().hex[:20]


def weakest(trusts: Iterable[Trust | str]) -> Trust:
    return Trust.UNTRUSTED if any(Trust(t) == Trust.UNTRUSTED for t in trusts) else Trust.TRUSTED


def to_memory(ctx: CallContext, row: VersionRow) -> Memory:
    """The ``Memory`` a caller sees for ``row``; reads not yet flushed (``memos.kernel.reads``) count too."""
    pending = ctx.kernel.reads.pending(row.memory_id)
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


def check_expected(row: VersionRow, expected: int | None) -> None:
    """Optimistic concurrency: ``expected`` (when given) must be the memory's current version."""
    if expected is not None and expected != row.current_version:
        raise VersionConflict(
            f"memory {row.memory_id} is at version {row.current_version}, not the expected {expected}",
            memory_id=row.memory_id, expected=expected, current=row.current_version,
        )


def derived_provenance(row: VersionRow, **update: Any) -> Provenance:
    """``row``'s provenance with ``update`` applied: the provenance of a version made from it."""
    return Provenance.model_validate(row.provenance).model_copy(update=update)


def first_version(
    ctx: CallContext, *, memory_id: str, cube: str, kind: str, provenance: Provenance, content: str,
    metadata: dict[str, Any], tags: tuple[str, ...], at: float | None = None,
    fingerprint: dict[str, Any] | None = None, payload: dict[str, Any] | None = None,
) -> VersionRow:
    """Create memory ``memory_id`` in ``cube`` with its version 1 (active)."""
    now = ctx.kernel.clock.now() if at is None else at
    ctx.kernel.store.insert_memory(memory_id, cube, kind, State.ACTIVE.value, now)
    return _append(ctx, None, memory_id=memory_id, cube=cube, kind=kind, state=State.ACTIVE, content=content,
                   metadata=metadata, tags=tags, provenance=provenance, now=now, fingerprint=fingerprint, payload=payload)


def next_version(ctx: CallContext, row: VersionRow, provenance: Provenance, *, at: float | None = None,
                 **changes: Any) -> VersionRow:
    """Write the next version of ``row``'s memory: ``row``'s fields, with ``changes`` applied."""
    unknown = set(changes) - _CHANGEABLE
    if unknown:
        raise TypeError(f"next_version cannot change {sorted(unknown)}")
    fields: dict[str, Any] = {
        "kind": row.kind, "state": row.state, "content": row.content, "metadata": row.metadata, "tags": row.tags,
        "fingerprint": row.fingerprint, "payload": row.payload, **changes,
    }
    now = ctx.kernel.clock.now() if at is None else at
    return _append(ctx, row, memory_id=row.memory_id, cube=row.cube, provenance=provenance, now=now, **fields)


def _append(
    ctx: CallContext, row: VersionRow | None, *, memory_id: str, cube: str, kind: str, state: State | str, content: str,
    metadata: dict[str, Any], tags: tuple[str, ...], provenance: Provenance, now: float,
    fingerprint: dict[str, Any] | None = None, payload: dict[str, Any] | None = None,
) -> VersionRow:
    kernel = ctx.kernel
    version = 1 if row is None else row.current_version + 1
    kind, payload, demoted = settle_kind(row, kind, str(state), content, payload)
    # The previous payload file is kept even when this version does not use it: a rollback can make its version
    # current again. Purge deletes it; the activation budget may evict it (memos.kernel.budget).
    if demoted:
        fingerprint = None
        ctx.emit(ev.Evicted(
            cube=cube, memory_id=memory_id, principal=provenance.author, tier="disk", reason=provenance.operation,
            version=version,
        ))
    kernel.store.append_version(
        memory_id=memory_id, version=version, cube=cube, kind=kind, state=str(state), content=content,
        metadata=metadata, tags=tags, provenance=provenance.model_dump(mode="json"),
        content_hash=content_hash(content), size_bytes=len(content.encode("utf-8")) + (payload or {}).get("size_bytes", 0),
        fingerprint=fingerprint, payload=payload, at=now,
    )
    if row is None or not _same_knowledge(row, str(state), content, metadata, tags):
        mark_children_stale(ctx, memory_id, version)
    new = kernel.store.get_version(memory_id, version)
    assert new is not None and new.version == version
    return new


def _same_knowledge(row: VersionRow, state: str, content: str, metadata: dict[str, Any], tags: tuple[str, ...]) -> bool:
    """A version that changes only the kind (a promotion or demotion: payload, fingerprint) holds what ``row``
    held: memories derived from ``row``'s memory still reflect it and are not marked stale."""
    return (state, content, metadata, tuple(tags)) == (row.state, row.content, row.metadata, tuple(row.tags))


def settle_kind(row: VersionRow | None, kind: str, state: str, content: str,
                payload: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None, bool]:
    """Enforce the activation invariant for a new version: returns (kind, payload, demoted).

    A payload carried over from ``row`` encodes ``row``'s content; a payload the caller brings (a migration's new
    cache, a rollback's cache of the version it restores) encodes the ``content`` it comes with."""
    if kind != Kind.ACTIVATION or row is None or payload is None:
        return kind, payload, False
    carried = row.payload is not None and payload.get("path") == row.payload.get("path")
    if state == State.ACTIVE and (content == row.content or not carried):
        return kind, payload, False
    return Kind.PLAINTEXT.value, None, True


def mark_children_stale(ctx: CallContext, memory_id: str, new_version: int) -> None:
    """Memories derived from an older version of ``memory_id`` no longer reflect their source."""
    store = ctx.kernel.store
    for child_id, parent_version in store.children_of(memory_id):
        if parent_version < new_version and child_id != memory_id:
            store.set_stale(child_id, True)
            ctx.emit(ev.Stale(
                cube=store.memory_cube(child_id), memory_id=child_id, source=memory_id, source_version=new_version,
            ))


def delete_blob(kernel: Kernel, path: Path) -> None:
    """Delete a payload file and tell the model host to drop it from its caches."""
    path.unlink(missing_ok=True)
    if kernel.model is not None:
        kernel.model.forget([str(path)])
