"""Episodic (group) caches through the kernel with a fake model host: one cache of several memories in order, with
provenance to each source version; stale when a source changes; preferred by assemble_context; never a search hit."""

from __future__ import annotations

import pytest

from memos.errors import InvalidState, InvalidSyscall
from memos.kernel.ops.groups import GROUP_KEY
from memos.types import Kind, MemoryRef
from tests.fakes import FakeModelPort

TEXTS = ("Mara keeps the brass key in the lighthouse.", "Tomas keeps the red notebook in the lighthouse cellar.")


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


@pytest.fixture
def session(mem):
    mem.create_cube("team/x")
    return [mem.write("team/x", t) for t in TEXTS]


def test_a_group_cache_holds_its_sources_in_order_with_their_versions(mem, session, model_port) -> None:
    (group,) = mem.migrate([m.id for m in reversed(session)], "activation", group="session-1", compression="int8")
    assert group.kind == Kind.ACTIVATION and group.id not in {m.id for m in session}
    assert group.provenance.derived_from == tuple(MemoryRef(id=m.id, version=m.version) for m in reversed(session))
    assert group.provenance.operation == "migrate:activation-group"
    assert group.content == "\n\n".join(reversed(TEXTS)) and group.metadata == {GROUP_KEY: "session-1"}
    assert group.payload is not None and group.fingerprint is not None and not group.stale
    assert model_port.compressions[-1]["quantize"] == "int8"
    assert [m.kind for m in session] == [mem.read(m.id).kind for m in session]  # the sources are left as they were
    (event,) = [e for e in mem.events(types=["migrated"]).events if e.memory_id == group.id]
    assert event.data["members"] == [m.id for m in reversed(session)] and event.data["group"] == "session-1"


def test_a_group_cache_goes_stale_when_a_source_changes_and_a_rebuild_refreshes_it(mem, session) -> None:
    (group,) = mem.migrate([m.id for m in session], "activation", group="session-1")
    mem.update(session[1].id, content="Tomas moved the red notebook to the attic.")
    stale = mem.read(group.id)
    assert stale.stale
    plan = mem.assemble_context("where is the red notebook kept", "team/x", token_budget=500)
    assert group.id not in {i.memory_id for i in plan.used}
    (rebuilt,) = mem.migrate([m.id for m in session], "activation", group="session-1")
    assert rebuilt.id == group.id and rebuilt.version > group.version and not rebuilt.stale
    assert "attic" in rebuilt.content and rebuilt.payload.path != group.payload.path
    assert rebuilt.provenance.derived_from[1] == MemoryRef(id=session[1].id, version=2)


def test_assemble_context_prefers_a_group_cache_that_covers_the_chosen_memories(mem, session) -> None:
    (group,) = mem.migrate([m.id for m in session], "activation", group="session-1")
    plan = mem.assemble_context("lighthouse keeps", "team/x", token_budget=500)
    by_id = {i.memory_id: i for i in plan.items}
    assert plan.items[0].memory_id == group.id and plan.items[0].use == "kv" and plan.items[0].cached_tokens > 0
    for m in session:
        assert by_id[m.id].use == "skip" and f"covered by episodic cache {group.id}" in by_id[m.id].reason
    assert plan.text_tokens == 0


def test_a_group_memory_is_not_a_search_hit(mem, session) -> None:
    (group,) = mem.migrate([m.id for m in session], "activation", group="session-1")
    hits = mem.search("lighthouse", "team/x", k=10)
    assert group.id not in {h.memory.id for h in hits} and len(hits) == 2


def test_a_group_that_covers_memories_not_chosen_is_not_used(mem, session) -> None:
    other = mem.write("team/x", "The kettle is blue and lives in the kitchen.")
    mem.migrate([session[0].id, other.id], "activation", group="mixed")
    plan = mem.assemble_context("red notebook cellar", "team/x", token_budget=500, k=1)
    assert all(i.kind == Kind.PLAINTEXT for i in plan.used)


def test_bad_groups_are_refused(mem, session) -> None:
    mem.create_cube("team/y")
    elsewhere = mem.write("team/y", "another cube")
    with pytest.raises(InvalidSyscall, match="at least two"):
        mem.migrate([session[0].id, session[0].id], "activation", group="g")
    with pytest.raises(InvalidSyscall, match="one cube"):
        mem.migrate([session[0].id, elsewhere.id], "activation", group="g")
    with pytest.raises(InvalidSyscall):
        mem.migrate([m.id for m in session], "plaintext", group="g")
    mem.delete(session[1].id)
    with pytest.raises(InvalidState):
        mem.migrate([m.id for m in session], "activation", group="g")


def test_generate_with_named_memories_uses_the_group_cache_that_covers_them_in_order(mem, session) -> None:
    third = mem.write("team/x", "The kettle is blue and lives in the kitchen.")
    (group,) = mem.migrate([m.id for m in session], "activation", group="session-1")
    question = [{"role": "user", "content": "Where is the brass key?"}]
    # The group's sources first, in its order, then another memory: one cache (the group) and one text block.
    out = mem.generate(question, memory=[session[0].id, session[1].id, third.id], token_budget=500)
    assert out.text == "1 kv, 1 text"
    used = [(i.memory_id, i.use) for i in out.plan.used]
    assert used == [(group.id, "kv"), (third.id, "text")]
    by_id = {i.memory_id: i for i in out.plan.items}
    for m in session:
        assert by_id[m.id].use == "skip" and f"covered by episodic cache {group.id}" in by_id[m.id].reason
    assert out.plan.items[0].cached_tokens == by_id[session[0].id].tokens + by_id[session[1].id].tokens
    (event,) = [e for e in mem.events(types=["activation_used"]).events if e.memory_id == group.id]
    assert event.data["tier"] in ("ram", "disk")


def test_generate_with_named_memories_keeps_their_order_over_a_group_cache(mem, session) -> None:
    third = mem.write("team/x", "The kettle is blue and lives in the kitchen.")
    (group,) = mem.migrate([m.id for m in session], "activation", group="session-1")
    question = [{"role": "user", "content": "Where is the brass key?"}]
    # Reversed, or not consecutive, or after a text memory: the group would change the prompt, so it is not used.
    for memory in ([session[1].id, session[0].id], [session[0].id, third.id, session[1].id],
                   [third.id, session[0].id, session[1].id]):
        out = mem.generate(question, memory=memory, token_budget=500)
        assert group.id not in {i.memory_id for i in out.plan.items}
        assert [i.memory_id for i in out.plan.used] == memory and out.text == f"0 kv, {len(memory)} text"
    # A stale group is never used.
    mem.update(session[1].id, content="Tomas moved the red notebook to the attic.")
    out = mem.generate(question, memory=[m.id for m in session], token_budget=500)
    assert out.text == "0 kv, 2 text"
