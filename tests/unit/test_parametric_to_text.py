"""``migrate(parametric -> plaintext)`` brings the sources' text back instead of one joined blob: active sources stay,
archived ones become active again with provenance naming the adapter, deleted ones are stood in for by the adapter's
evaluation answers (generated, untrusted), purged ones stay erased; the adapter is archived as text with its file
kept, a rollback makes it an adapter again, and restoring twice writes nothing twice. The model host is the scripted
FakeModelPort (its evaluation answers each fact's question with the fact)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeModelPort

from memos.errors import InvalidState
from memos.types import Kind, MemoryRef, Source, State, Trust

TEXTS = ("Mara keeps the brass key in Trumwick.", "The vault code is 4417.", "Ilse works as a glassblower.",
         "Pelmark has a red lighthouse.")


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


@pytest.fixture
def distilled(mem):
    mem.create_cube("team/facts")
    ids = [mem.write("team/facts", t).id for t in TEXTS]
    return ids, mem.distill(ids, "team/facts")


def active_ids(mem, cube: str = "team/facts") -> set[str]:
    return {m.id for m in mem.list(cube)}


def test_active_sources_stay_as_they_are_and_the_adapter_is_archived_as_text_with_its_file_kept(mem, distilled) -> None:
    ids, adapter = distilled
    before = {i: mem.read(i).version for i in ids}
    out = mem.migrate([adapter.id], "plaintext")
    assert [m.id for m in out] == [adapter.id]  # nothing else written: every source was active
    archived = out[0]
    assert (archived.kind, archived.state, archived.version) == (Kind.PLAINTEXT, State.ARCHIVED, adapter.version + 1)
    assert archived.payload is None and archived.provenance.operation == "migrate:plaintext"
    assert archived.metadata["restored"] == {"active": ids, "restored": [], "stand_ins": {}, "not_restored": {}}
    assert {i: mem.read(i).version for i in ids} == before
    assert Path(adapter.payload.path).is_file()  # kept for a rollback (payload lifetime follows versions)
    assert active_ids(mem) == set(ids)  # one copy of each fact in the cube, no joined blob
    event = mem.events(types=["migrated"]).events[-1]
    assert (event.data["frm"], event.data["to"], event.data["restored"], event.data["stand_ins"]) == (
        "parametric", "plaintext", 0, 0)
    plan = mem.assemble_context("Where does Mara keep the brass key?", "team/facts", token_budget=4096)
    assert plan.adapter is None and plan.covered == ()


def test_archived_sources_come_back_active_with_provenance_and_deleted_ones_are_stood_in_for(mem, distilled) -> None:
    ids, adapter = distilled
    archived_src, deleted_src = ids[0], ids[1]
    mem.archive(archived_src)
    mem.delete(deleted_src)
    out = mem.migrate([adapter.id], "plaintext")
    report = out[0].metadata["restored"]
    assert report["active"] == ids[2:] and report["restored"] == [archived_src]
    assert set(report["stand_ins"]) == {deleted_src} and report["not_restored"] == {}

    back = mem.read(archived_src)
    assert back.state == State.ACTIVE and back.content == TEXTS[0] and back.version == 3
    assert back.provenance.operation == "migrate:plaintext"
    assert back.provenance.derived_from == (MemoryRef(id=adapter.id, version=adapter.version),
                                            MemoryRef(id=archived_src, version=2))
    assert back.provenance.trust == Trust.TRUSTED  # the weakest of the adapter's and the source's: both trusted

    stand_in = mem.read(report["stand_ins"][deleted_src])
    assert stand_in.provenance.source == Source.GENERATED and stand_in.provenance.trust == Trust.UNTRUSTED
    assert stand_in.provenance.derived_from == (MemoryRef(id=adapter.id, version=adapter.version),
                                                MemoryRef(id=deleted_src, version=1))  # the version the adapter learnt
    assert stand_in.content == "Q: What do you know about The?\nA: The vault code is 4417."
    assert stand_in.metadata["stands_in_for"] == {"id": deleted_src, "version": 1}
    assert mem.read(deleted_src).state == State.DELETED  # the deletion stands; its knowledge is back as generated
    assert [m.id for m in out] == [adapter.id, archived_src, stand_in.id]
    assert active_ids(mem) == {archived_src, stand_in.id, *ids[2:]}
    # Generated memories rank below observed ones: an observed fact of the same wording comes first.
    observed = mem.write("team/facts", "The vault code is 4417.").id
    hits = [h.memory.id for h in mem.search("vault code 4417", "team/facts")]
    assert hits.index(observed) < hits.index(stand_in.id)


def test_purged_sources_stay_erased_and_sources_of_other_cubes_stay_in_their_cubes(mem, kernel) -> None:
    mem.create_cube("team/facts")
    mem.create_cube("agent/alice/notes")
    ids = [mem.write("team/facts", t).id for t in TEXTS[:2]]
    private = mem.write("agent/alice/notes", "Alice's locker code is 9911.").id
    adapter = mem.distill([*ids, private], "team/facts")
    mem.purge(ids[0])
    mem.delete(private)
    report = mem.migrate([adapter.id], "plaintext")[0].metadata["restored"]
    assert report["active"] == [ids[1]] and report["stand_ins"] == {} and report["restored"] == []
    assert report["not_restored"][ids[0]].startswith("purged")
    assert report["not_restored"][private] == "in another cube (agent/alice/notes): its text stays there"
    assert active_ids(mem) == {ids[1]}
    assert all("9911" not in m.content for m in mem.list("team/facts"))
    assert "9911" not in str(adapter.metadata)  # no answer about another cube's memory is kept here
    assert mem.read(private).state == State.DELETED


def test_a_deleted_source_without_a_correct_answer_is_reported_not_invented(mem, model_port) -> None:
    mem.create_cube("team/facts")
    ids = [mem.write("team/facts", t).id for t in TEXTS[:2]]
    model_port.weak_recipes = ({},)  # every answer wrong: nothing to stand in with
    adapter = mem.distill(ids, "team/facts")
    assert adapter.metadata["answers"] == []
    mem.delete(ids[0])
    report = mem.migrate([adapter.id], "plaintext")[0].metadata["restored"]
    assert report["stand_ins"] == {} and "kept no correct answer" in report["not_restored"][ids[0]]
    assert active_ids(mem) == {ids[1]}


def test_kept_answers_are_cut_to_the_metadata_limit_with_a_marker(mem) -> None:
    """60 facts of ~400 bytes would keep ~30 KiB of answers; the metadata stays within its 16 KiB limit, the cut is
    marked, and a deleted source whose answer was kept is still stood in for."""
    import json

    from memos.kernel.ops.distill import fit_answers
    from memos.syscalls import MAX_METADATA_BYTES

    mem.create_cube("team/facts")
    texts = [f"Fact{i:02d} keeps a ledger in Trumwick, " + "and a long list of its entries follows. " * 9
             for i in range(60)]
    ids = [mem.write("team/facts", t).id for t in texts]
    adapter = mem.distill(ids, "team/facts")
    meta = adapter.metadata
    assert len(json.dumps(meta, ensure_ascii=False).encode()) <= MAX_METADATA_BYTES
    kept = meta["answers"]
    assert meta["answers_truncated"] == {"kept": len(kept), "of": 60} and 0 < len(kept) < 60
    assert [a["source"] for a in kept] == ids[: len(kept)]  # one answer per source here: the first ones, in order
    mem.delete(ids[0])
    report = mem.migrate([adapter.id], "plaintext")[0].metadata["restored"]
    assert set(report["stand_ins"]) == {ids[0]}
    # Several answers per source: every source's first answer goes before any source's second.
    answers = [{"source": s, "question": f"q{n}", "answer": "x" * 200} for s in ("a", "b") for n in range(3)]
    cut = fit_answers({"answers": answers}, limit=800)
    assert [(a["source"], a["question"]) for a in cut["answers"]] == [("a", "q0"), ("b", "q0")]
    assert cut["answers_truncated"] == {"kept": 2, "of": 6}
    assert fit_answers({"answers": answers[:1]}) == {"answers": answers[:1]}  # under the limit: unchanged


def test_migrate_back_then_rollback_makes_the_adapter_current_and_restoring_twice_writes_nothing_twice(
    mem, distilled
) -> None:
    ids, adapter = distilled
    mem.archive(ids[0])
    mem.delete(ids[1])
    first = mem.migrate([adapter.id], "plaintext")
    stand_in = first[0].metadata["restored"]["stand_ins"][ids[1]]
    # Migrating the archived text again changes nothing.
    assert [m.version for m in mem.migrate([adapter.id], "plaintext")] == [first[0].version]

    again = mem.rollback(adapter.id, to_version=adapter.version)
    assert (again.kind, again.state, again.payload) == (Kind.PARAMETRIC, State.ACTIVE, adapter.payload)
    assert again.metadata == adapter.metadata and again.provenance.derived_from == adapter.provenance.derived_from
    assert again.stale  # its sources changed (one archived then restored, one deleted) since it learnt them

    mem.archive(stand_in)  # someone archived the stand-in meanwhile
    second = mem.migrate([again.id], "plaintext")
    report = second[0].metadata["restored"]
    assert report["stand_ins"] == {ids[1]: stand_in}  # the same stand-in, made active again, not a second one
    assert report["active"] == [ids[0], *ids[2:]] and report["restored"] == []
    assert [m.id for m in second] == [adapter.id, stand_in]
    assert mem.read(stand_in).state == State.ACTIVE
    assert active_ids(mem) == {ids[0], stand_in, *ids[2:]}
    assert sum(1 for m in mem.list("team/facts", states=["active", "archived", "deleted"])
               if m.metadata.get("stands_in_for")) == 1

    # A deleted stand-in stays deleted on a third pass (someone deleted it; restore brings it back).
    mem.delete(stand_in)
    mem.rollback(adapter.id, to_version=adapter.version)
    report = mem.migrate([adapter.id], "plaintext")[0].metadata["restored"]
    assert report["stand_ins"] == {} and f"its stand-in {stand_in} was deleted" in report["not_restored"][ids[1]]


def test_a_rollback_to_an_adapter_whose_file_is_gone_is_refused(mem, distilled) -> None:
    _, adapter = distilled
    mem.migrate([adapter.id], "plaintext")
    Path(adapter.payload.path).unlink()
    with pytest.raises(InvalidState, match="adapter file of version 1 is missing"):
        mem.rollback(adapter.id, to_version=adapter.version)
    assert mem.read(adapter.id).kind == Kind.PLAINTEXT


def test_a_plaintext_memory_still_cannot_roll_back_into_an_activation_version(mem, model_port) -> None:
    mem.create_cube("team/facts")
    memory = mem.write("team/facts", TEXTS[0])
    mem.migrate([memory.id], "activation")
    mem.migrate([memory.id], "plaintext")
    with pytest.raises(InvalidState, match="migrate instead"):
        mem.rollback(memory.id, to_version=2)
