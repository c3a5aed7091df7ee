"""``ingest``: facts extracted from messages, each decided add / update / invalidate / noop with provenance."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memos.errors import InvalidSyscall, ModelUnavailable, NotFound, PermissionDenied
from memos.kernel.memreader import Fact, Known, decide
from memos.types import from_epoch

CUBE = "team/chat"


def msg(id_, speaker, content, day=8, session="1"):
    return {"id": id_, "speaker": speaker, "content": content, "at": datetime(2023, 5, day, 13, 56, tzinfo=UTC),
            "session": session}


def test_add_extracts_attributed_dated_facts_with_provenance(mem):
    mem.create_cube(CUBE)
    result = mem.ingest(CUBE, [
        msg("D1:1", "Caroline", "Hey Mel! I went to a LGBTQ support group yesterday. How are you?"),
        msg("D1:2", "Mel", "Thanks! I live in Boston."),
    ])
    assert result.extractor == "rules"
    assert [d.action for d in result.decisions] == ["add", "add"]
    first, second = (mem.read(d.memory.id) for d in result.decisions)
    assert first.content == "[8 May 2023] Caroline went to a LGBTQ support group yesterday (7 May 2023)."
    assert first.provenance.source_refs == ("D1:1",)
    assert first.provenance.operation == "ingest:rules"
    assert first.provenance.author == "agent:alice"
    assert first.metadata["speaker"] == "Caroline" and first.metadata["session"] == "1"
    assert second.provenance.source_refs == ("D1:2",)
    assert (second.metadata["subject"], second.metadata["attribute"], second.metadata["value"]) == ("Mel", "lives in", "boston")


def test_noop_when_the_cube_already_says_it(mem):
    mem.create_cube(CUBE)
    mem.ingest(CUBE, [msg("a", "Mel", "I live in Boston.")])
    again = mem.ingest(CUBE, [msg("b", "Mel", "I live in Boston!", day=9)])
    (d,) = again.decisions
    assert d.action == "noop" and d.memory is None
    assert "already says" in d.reason and d.source_refs == ("b",)
    assert len(mem.list(CUBE)) == 1


def test_update_writes_a_new_version_that_joins_the_provenance(mem):
    mem.create_cube(CUBE)
    (added,) = mem.ingest(CUBE, [msg("a", "Mel", "I adopted a dog named Max.")]).decisions
    (upd,) = mem.ingest(CUBE, [msg("b", "Mel", "I adopted a dog named Max from the shelter downtown.")]).decisions
    assert upd.action == "update" and upd.target == added.memory
    assert upd.memory.id == added.memory.id and upd.memory.version == 2
    now = mem.read(added.memory.id)
    assert "shelter downtown" in now.content
    assert now.provenance.source_refs == ("a", "b") and now.provenance.operation == "ingest:rules:update"
    assert [v.version for v in mem.history(added.memory.id)] == [1, 2]


def test_invalidate_supersedes_the_contradicted_fact_and_as_of_still_finds_it(mem, clock):
    mem.create_cube(CUBE)
    (old,) = mem.ingest(CUBE, [msg("a", "Mel", "I live in Boston.")]).decisions
    before = from_epoch(clock.now())
    clock.advance(60)
    (new,) = mem.ingest(CUBE, [msg("b", "Mel", "I moved to Berlin.", day=20)]).decisions
    assert new.action == "invalidate" and new.target == old.memory
    assert "was 'boston', now 'berlin'" in new.reason
    retired = mem.read(old.memory.id)
    assert retired.state == "archived" and retired.version == 2
    assert retired.metadata["superseded_by"] == new.memory.id
    assert retired.metadata["valid_until"].startswith("2023-05-20")
    assert retired.provenance.operation == "ingest:rules:invalidate" and retired.provenance.source_refs == ("b",)
    current = mem.read(new.memory.id)
    assert current.metadata["supersedes"] == old.memory.id and current.provenance.source_refs == ("b",)
    # search prefers the current fact; as_of finds what was true then
    assert [h.memory.id for h in mem.search("where does Mel live", CUBE)] == [new.memory.id]
    assert [h.memory.id for h in mem.search("where does Mel live", CUBE, as_of=before)] == [old.memory.id]
    assert {(r.memory.id, r.relation) for r in mem.related(new.memory.id, include_inactive=True)} >= {
        (old.memory.id, "supersedes")}


def test_trust_is_no_higher_than_the_input(mem):
    mem.create_cube(CUBE)
    (d,) = mem.ingest(CUBE, [msg("a", "web", "The museum opens at nine every Sunday.")], source="tool").decisions
    assert mem.read(d.memory.id).provenance.trust == "untrusted"
    (t,) = mem.ingest(CUBE, [msg("b", "Mel", "I live in Boston.")], trust="untrusted").decisions
    assert mem.read(t.memory.id).provenance.trust == "untrusted"


def test_later_facts_of_one_call_see_the_earlier_ones(mem):
    mem.create_cube(CUBE)
    result = mem.ingest(CUBE, [msg("a", "Mel", "My favorite color is blue."),
                               msg("b", "Mel", "My favorite color is green now.", day=9)])
    assert [d.action for d in result.decisions] == ["add", "invalidate"]
    assert [m.content for m in mem.list(CUBE)] == ["[9 May 2023] Mel's favorite color is green now."]


def test_dry_run_decides_and_writes_nothing(mem):
    mem.create_cube(CUBE)
    result = mem.ingest(CUBE, [msg("a", "Mel", "I live in Boston.")], dry_run=True)
    assert result.dry_run and [d.action for d in result.decisions] == ["add"] and result.decisions[0].memory is None
    assert mem.list(CUBE) == ()


def test_ingest_checks_rights_and_input(mem):
    mem.create_cube(CUBE)
    with pytest.raises(PermissionDenied):
        mem.as_principal("agent:bob").ingest(CUBE, [msg("a", "Mel", "I live in Boston.")])
    with pytest.raises(InvalidSyscall, match="distinct message ids"):
        mem.ingest(CUBE, [msg("a", "Mel", "I live in Boston."), msg("a", "Mel", "I like tea a lot.")])
    with pytest.raises(InvalidSyscall):
        mem.ingest(CUBE, [])


def test_ingest_without_a_language_model_is_a_clear_error(mem, kernel):
    mem.create_cube(CUBE)
    kernel.llm = None
    with pytest.raises(ModelUnavailable, match="language model"):
        mem.ingest(CUBE, [msg("a", "Mel", "I live in Boston.")])


def test_decide_prefers_noop_then_property_then_refinement():
    fact = Fact("Mel lives in Berlin.", ("x",), subject="Mel", attribute="lives in", value="berlin")
    same = Known("m_1", 1, "Mel lives in Berlin.", {})
    boston = Known("m_2", 3, "Mel lives in Boston.", {"subject": "mel", "attribute": "Lives in", "value": "boston"})
    assert decide(fact, [boston, same]).action == "noop"
    assert decide(fact, [boston]).action == "invalidate"
    refined = Fact("Mel lives in Berlin, Kreuzberg.", subject="Mel", attribute="lives in", value="berlin kreuzberg")
    berlin = Known("m_3", 1, "Mel lives in Berlin.", {"subject": "Mel", "attribute": "lives in", "value": "berlin"})
    assert decide(refined, [berlin]).action == "update"
    assert decide(Fact("Mel paints sunsets."), [berlin]).action == "add"


def test_related_reads_links_provenance_session_neighbours_and_subject(mem):
    mem.create_cube(CUBE)
    result = mem.ingest(CUBE, [
        msg("a", "Mel", "I adopted a puppy called Max."),
        msg("b", "Ana", "I started pottery classes on Monday."),
        msg("c", "Mel", "Max chews every shoe in the house."),
        msg("z", "Mel", "I painted a sunrise over the lake.", session="2"),
    ])
    a, b, c, z = (d.memory.id for d in result.decisions)
    summary = mem.write(CUBE, "Mel has a puppy, Max.", source="derived", derived_from=[(a, 1)])
    related = {(r.memory.id, r.relation) for r in mem.related(b)}
    assert {(a, "same_session"), (c, "same_session")} <= related and z not in {m for m, _ in related}
    assert {(b, "same_session"), (summary.id, "derived"), (c, "same_subject"), (z, "same_subject")} <= {
        (r.memory.id, r.relation) for r in mem.related(a)}
    assert [r.memory.id for r in mem.related(summary.id, relations=["derived_from"])] == [a]
    assert [r.relation for r in mem.related(a, k=1)] == ["derived"]
    with pytest.raises(NotFound):  # a memory in a cube the caller cannot read is not revealed
        mem.as_principal("agent:bob").related(a)


def test_search_expands_hits_to_linked_neighbours(mem):
    mem.create_cube(CUBE)
    result = mem.ingest(CUBE, [
        msg("a", "Mel", "I adopted a puppy last week."),
        msg("b", "Mel", "His name is Max and he loves the beach."),
        msg("c", "Ana", "Pottery classes start again in autumn.", session="2"),
    ])
    a, b, c = (d.memory.id for d in result.decisions)
    plain = mem.search("adopted puppy", CUBE, k=3, mode="lexical")
    assert [h.memory.id for h in plain] == [a]
    expanded = mem.search("adopted puppy", CUBE, k=3, mode="lexical", expand=1)
    assert [h.memory.id for h in expanded] == [a, b]
    assert expanded[1].via == f"same_session of {a}" and expanded[1].score == pytest.approx(0.9 * expanded[0].score)
    assert expanded[1].dense_rank is None and expanded[1].lexical_rank is None
    assert c not in {h.memory.id for h in mem.search("adopted puppy", CUBE, k=5, mode="lexical", expand=2)}
    mem.create_cube("team/other")
    other = mem.write("team/other", "Max the puppy, adopted")
    mem.link(a, other.id, "mentions")
    linked = mem.search("adopted puppy", CUBE, k=5, mode="lexical", expand=1)
    assert [h.via for h in linked] == [None, f"same_session of {a}"]  # the link leads out of the searched cube
    both = mem.search("puppy", [CUBE, "team/other"], k=5, mode="lexical", expand=1, tags=["none-has-this"])
    assert both == ()  # expansion obeys the filters as the hits do


def test_cli_ingest_shows_each_decision_and_why(mem, tmp_path, capsys):
    import argparse
    import json

    from memos.cli.memory import _ingest

    conversation = tmp_path / "conversation.json"
    conversation.write_text(json.dumps({"messages": [
        {"id": "m1", "speaker": "Mel", "content": "I live in Boston."},
        {"id": "m2", "speaker": "Mel", "content": "I moved to Berlin."},
    ]}), encoding="utf-8")
    args = argparse.Namespace(cube="team/chat", file=conversation, dry_run=False, json=False)
    assert _ingest(mem, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ADD ") and lines[0].endswith("Mel lives in Boston.")
    assert lines[2].startswith("INVALIDATE ") and "was 'boston', now 'berlin'; from m2" in lines[3]
    assert lines[-1] == "2 facts by rules: 1 add, 0 update, 1 invalidate, 0 noop"
    conversation.write_text("{not json")
    with pytest.raises(InvalidSyscall, match="cannot read a JSON conversation"):
        _ingest(mem, args)
