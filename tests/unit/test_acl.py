"""Access control is enforced in the kernel on every syscall, and denials are audited."""

from __future__ import annotations

import pytest

from memos.errors import NotFound, PermissionDenied


@pytest.fixture
def team(mem):
    mem.create_cube("team/x")
    return mem.write("team/x", "a secret plan about otters")


def test_principal_without_grant_can_neither_read_search_nor_write(mem, team):
    bob = mem.as_principal("agent:bob")
    with pytest.raises(PermissionDenied) as err:
        bob.search("otters", "team/x")
    assert err.value.details == {"cube": "team/x", "right": "read"}
    assert "read" in str(err.value) and "team/x" in str(err.value)
    with pytest.raises(PermissionDenied) as err:
        bob.write("team/x", "my note")
    assert err.value.details["right"] == "write"
    # A memory in a cube bob cannot read is not revealed to exist.
    with pytest.raises(NotFound) as err:
        bob.read(team.id)
    assert "team/x" not in str(err.value) and "otters" not in str(err.value)
    with pytest.raises(NotFound):
        bob.history(team.id)


def test_denials_are_in_the_audit_log(mem, team):
    bob = mem.as_principal("agent:bob")
    for attempt in (lambda: bob.search("otters", "team/x"), lambda: bob.read(team.id), lambda: bob.write("team/x", "x")):
        with pytest.raises((PermissionDenied, NotFound)):
            attempt()
    denied = [r for r in mem.audit("team/x") if r.outcome == "denied"]
    assert [(r.principal, r.op) for r in denied] == [("agent:bob", "search"), ("agent:bob", "read"), ("agent:bob", "write")]
    assert denied[1].memory_id == team.id
    assert any(e.type == "denied" for e in mem.events(cubes=["team/x"]).events)


def test_rights_are_ordered_and_revocable(mem, team):
    bob = mem.as_principal("agent:bob")
    mem.grant("team/x", "agent:bob", "read")
    assert [h.memory.id for h in bob.search("otters", "team/x")] == [team.id]
    with pytest.raises(PermissionDenied) as err:
        bob.update(team.id, content="changed")
    assert err.value.details["right"] == "write"
    mem.grant("team/x", "agent:bob", "write")
    assert bob.update(team.id, content="otters hold hands").version == 2
    with pytest.raises(PermissionDenied):
        bob.grant("team/x", "agent:carol", "read")  # needs admin
    mem.revoke("team/x", "agent:bob")
    with pytest.raises(PermissionDenied):
        bob.search("otters", "team/x")


def test_everyone_grant_and_owner_cannot_be_revoked(mem, team):
    mem.grant("team/x", "*", "read")
    assert mem.as_principal("user:anyone").search("otters", "team/x")
    with pytest.raises(Exception) as err:
        mem.revoke("team/x", "agent:alice")
    assert "owner" in str(err.value)


def test_events_and_stats_only_cover_readable_cubes(mem, team):
    bob = mem.as_principal("agent:bob")
    bob.create_cube("agent/bob/notes")
    bob.write("agent/bob/notes", "bob's private thought")
    assert {e.cube for e in bob.events().events} == {"agent/bob/notes"}
    assert bob.stats().cubes == 1
    with pytest.raises(PermissionDenied):
        bob.events(cubes=["team/x"])
    with pytest.raises(PermissionDenied):
        bob.audit()  # the global audit log is for superusers


def test_superuser_sees_everything(mem, team):
    system = mem.as_principal("system")
    assert system.read(team.id).content == team.content
    assert system.audit()
