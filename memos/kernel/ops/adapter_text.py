"""``migrate(parametric -> plaintext)``: the adapter steps back and its sources' text comes back.

An adapter is learnt from a set of memories; going back to text means those memories, not one joined blob. In one
transaction (``restore_sources``, called by ``memos.kernel.ops.kinds.MigrateOp.commit``):

1. **The parametric memory is archived**: version n+1 of the same memory, kind ``plaintext``, state ``archived``,
   no payload, its text and metadata kept, plus ``metadata["restored"]`` (what became of each source, below). Its
   adapter file stays on disk (payload lifetime follows versions, ``memos.kernel.versions``): ``rollback(ID,
   to_version=n)`` makes the adapter current and active again (the one rollback across kinds that is allowed:
   nothing else can make an adapter from text) until ``purge`` deletes the file.
2. **Each source in the adapter's cube** (the caller may write there: migrate checked it):
   - active: left as it is (its current version is already active memory; nothing written);
   - archived: its current version is made active again (version n+1, same text), with provenance
     ``derived_from`` the adapter at version n and the source at its current version, operation
     ``migrate:plaintext``, trust the weakest of the two;
   - deleted (tombstone): the adapter's **evaluation answers** for it stand in: one new memory holding the
     questions the evaluation asked about that source and the adapter's replies it judged correct
     (``metadata["answers"]`` of the adapter, copied from its evaluation at distillation), with provenance source
     ``generated`` (so untrusted and ranked at half score, ``memos.types.GENERATED_WEIGHT``), ``derived_from`` the
     adapter at version n and the source at the version the adapter learnt, operation ``migrate:plaintext``;
   - purged: nothing. A purge erases a memory's text on purpose (docs/reliability.md, "What forget guarantees");
     writing the adapter's answers about it back into searchable text would undo that.
3. **Sources in other cubes** are left as they are: their text stays in their cubes, whose readers are not this
   cube's (the adapter's own text never copied them either).

**Restoring twice writes nothing twice.** A stand-in is found again by its derivation and metadata (a current
version derived from this adapter, with ``metadata["stands_in_for"]`` naming the source): an active one is kept, an archived one is
made active, a deleted one stays deleted (someone deleted it; ``restore`` brings it back). A restored source is
active, so a second pass leaves it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos.kernel.versions import derived_provenance, first_version, next_version, weakest
from memos.types import Kind, MemoryRef, Provenance, Source, State, Trust

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.storage.sqlite import VersionRow

OPERATION = "migrate:plaintext"


def restore_sources(ctx: CallContext, adapter: VersionRow, rule: str | None) -> tuple[VersionRow, list[VersionRow]]:
    """Archive the parametric memory ``adapter`` (its current version) as plaintext and bring its sources' text back
    (module docstring). Returns the archived version and the memory versions written or kept for the sources."""
    store = ctx.kernel.store
    now = ctx.kernel.clock.now()
    at = MemoryRef(id=adapter.memory_id, version=adapter.version)
    answers: dict[str, list[dict[str, Any]]] = {}
    for answer in adapter.metadata.get("answers") or ():
        answers.setdefault(answer["source"], []).append(answer)
    earlier = _stand_ins(ctx, adapter.memory_id)

    # Decide first (the report goes into the adapter's version, which is written before the sources' versions).
    report: dict[str, Any] = {"active": [], "restored": [], "stand_ins": {}, "not_restored": {}}
    actions: list[tuple[str, Any]] = []
    for ref in adapter.provenance.get("derived_from", ()):
        source_id, learnt = ref["id"], ref["version"]
        cube = store.memory_cube(source_id)
        row = store.get_version(source_id) if cube == adapter.cube else None
        if cube is None:
            report["not_restored"][source_id] = "purged: its text was erased on purpose and is not written back"
        elif row is None:
            report["not_restored"][source_id] = f"in another cube ({cube}): its text stays there"
        elif row.state == State.ACTIVE:
            report["active"].append(source_id)
        elif row.state == State.ARCHIVED:
            report["restored"].append(source_id)
            actions.append(("restore", row))
        elif (existing := earlier.get(source_id)) is not None:
            if existing.state == State.DELETED:
                report["not_restored"][source_id] = (f"deleted, and its stand-in {existing.memory_id} was deleted "
                                                     "too (restore it to bring it back)")
                continue
            report["stand_ins"][source_id] = existing.memory_id
            if existing.state == State.ARCHIVED:
                actions.append(("unarchive", existing))
        elif answers.get(source_id):
            memory_id = ctx.kernel.new_id()
            report["stand_ins"][source_id] = memory_id
            actions.append(("stand_in", (memory_id, source_id, learnt, answers[source_id])))
        else:
            report["not_restored"][source_id] = (
                "deleted, and the adapter's evaluation kept no correct answer about it (distilled before answers "
                "were kept, every question about it was missed, or its answers were cut to fit the metadata limit)")

    # Its text is still what the sources said at the versions it learnt: derived_from stays, so a source that
    # changes later marks it stale as before (and a rollback to the adapter finds it stale).
    prov = derived_provenance(adapter, author=ctx.principal, operation=OPERATION, policy_rule=rule, source_refs=())
    # The adapter's version first: what is written below derives from its version n and must not be marked stale
    # by the adapter's own next version.
    archived = next_version(ctx, adapter, prov, at=now, kind=Kind.PLAINTEXT.value, state=State.ARCHIVED,
                            metadata={**adapter.metadata, "restored": report}, fingerprint=None, payload=None)
    written: list[VersionRow] = []
    adapter_trust = adapter.provenance.get("trust", Trust.TRUSTED.value)
    for action, arg in actions:
        if action == "restore":
            trust = weakest([adapter_trust, arg.provenance.get("trust", Trust.TRUSTED.value)])
            source_prov = derived_provenance(
                arg, author=ctx.principal, operation=OPERATION, policy_rule=rule, source_refs=(), trust=trust,
                derived_from=(at, MemoryRef(id=arg.memory_id, version=arg.version)),
            )
            written.append(next_version(ctx, arg, source_prov, at=now, state=State.ACTIVE))
        elif action == "unarchive":  # an earlier stand-in: its own provenance, active again
            stand_in_prov = derived_provenance(arg, author=ctx.principal, policy_rule=rule, source_refs=())
            written.append(next_version(ctx, arg, stand_in_prov, at=now, state=State.ACTIVE))
        else:
            written.append(_write_stand_in(ctx, adapter, at, *arg, rule=rule, now=now))
    return archived, written


def _stand_ins(ctx: CallContext, adapter_id: str) -> dict[str, VersionRow]:
    """The stand-ins an earlier pass wrote for this adapter's sources, by source id."""
    store = ctx.kernel.store
    found = {}
    for child_id, _ in store.children_of(adapter_id):
        row = store.get_version(child_id)
        # Found by what it is (its metadata names the adapter and the source), not by its last operation: it may
        # have been archived or edited since.
        source = (row.metadata.get("stands_in_for") or {}).get("id") if row is not None else None
        if source is not None and (row.metadata.get("adapter") or {}).get("id") == adapter_id:
            found[source] = row
    return found


def _write_stand_in(ctx: CallContext, adapter: VersionRow, at: MemoryRef, memory_id: str, source_id: str,
                    learnt: int, answers: list[dict[str, Any]], *, rule: str | None, now: float) -> VersionRow:
    """The generated memory that stands in for the deleted source ``source_id``: the adapter's answers about it."""
    content = "\n".join(f"Q: {a['question']}\nA: {a['answer']}" for a in answers)
    prov = Provenance(
        author=ctx.principal, source=Source.GENERATED, operation=OPERATION, policy_rule=rule, trust=Trust.UNTRUSTED,
        derived_from=(at, MemoryRef(id=source_id, version=learnt)),
    )
    metadata = {"stands_in_for": {"id": source_id, "version": learnt},
                "adapter": {"id": adapter.memory_id, "version": adapter.version}}
    return first_version(ctx, memory_id=memory_id, cube=adapter.cube, kind=Kind.PLAINTEXT.value, provenance=prov,
                         content=content, metadata=metadata, tags=(), at=now)
