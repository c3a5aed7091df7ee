"""Deletion that is real: ``purge`` erases every version of a memory from every table, from the lexical and the
vector index, marks what was derived from it stale and is audited; a tombstone (``delete``) only hides.

Each version carries its own unmistakable word, so "is any of it left?" is a question for every table and index.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from memos.errors import NotFound, PermissionDenied
from memos.kernel import Kernel
from memos.types import State, from_epoch

WORDS = ("swordfishzebra", "marlinzebra", "tunazebra")  # one per version


def rows(kernel: Kernel, sql: str, *params: object) -> list[tuple]:
    """Ask the database file directly, on a connection of its own (what any reader of the file would see)."""
    with closing(sqlite3.connect(f"file:{kernel.store.path}?mode=ro", uri=True)) as db:
        return db.execute(sql, params).fetchall()


def traces(kernel: Kernel, memory_id: str) -> dict[str, int]:
    """How much of ``memory_id`` each table and index still holds."""
    match = " OR ".join(WORDS)
    return {
        "memories": rows(kernel, "SELECT COUNT(*) FROM memories WHERE id = ?", memory_id)[0][0],
        "versions": rows(kernel, "SELECT COUNT(*) FROM versions WHERE memory_id = ?", memory_id)[0][0],
        "fts": rows(kernel, "SELECT COUNT(*) FROM versions_fts WHERE versions_fts MATCH ?", match)[0][0],
        "access_log": rows(kernel, "SELECT COUNT(*) FROM access_log WHERE memory_id = ?", memory_id)[0][0],
        "links": rows(kernel, "SELECT COUNT(*) FROM links WHERE source = ? OR target = ?", memory_id, memory_id)[0][0],
        "derived_from_others": rows(kernel, "SELECT COUNT(*) FROM derivations WHERE child_id = ?", memory_id)[0][0],
        "vector_index": sum(1 for entry in kernel.index.ids() if entry.startswith(f"{memory_id}@")),
        "index_outbox": rows(kernel, "SELECT COUNT(*) FROM index_outbox WHERE entry LIKE ?", f"{memory_id}@%")[0][0],
    }


@pytest.fixture
def secret(mem, clock):
    """A memory with three versions, read, linked both ways and derived from another memory."""
    mem.create_cube("team/x")
    other = mem.write("team/x", "the harbour opens at dawn")
    m = mem.write("team/x", f"the vault password is {WORDS[0]}", derived_from=[(other.id, 1)], tags=["vault"])
    clock.advance(10)
    mem.update(m.id, content=f"the vault password is {WORDS[1]}")
    clock.advance(10)
    mem.update(m.id, content=f"the vault password is {WORDS[2]}")
    mem.read(m.id)
    mem.link(m.id, other.id)
    mem.link(other.id, m.id)
    return mem.read(m.id)


def test_purge_leaves_nothing_of_any_version_in_any_table_or_index(mem, kernel, clock, secret):
    before = traces(kernel, secret.id)
    assert before["versions"] == 3 and before["vector_index"] == 3 and before["fts"] == 3
    assert "3 versions" in mem.purge(secret.id).detail
    assert traces(kernel, secret.id) == dict.fromkeys(before, 0)


def test_a_purged_memory_is_gone_for_every_syscall_and_every_instant(mem, clock, secret):
    first = clock.now() - 5
    mem.purge(secret.id)
    for call in (lambda: mem.read(secret.id), lambda: mem.read(secret.id, version=1), lambda: mem.history(secret.id),
                 lambda: mem.update(secret.id, content="back"), lambda: mem.restore(secret.id),
                 lambda: mem.purge(secret.id)):
        with pytest.raises(NotFound):
            call()
    for word in WORDS:
        for mode in ("hybrid", "dense", "lexical"):
            assert secret.id not in {h.memory.id for h in mem.search(word, "team/x", mode=mode)}
            assert secret.id not in {h.memory.id for h in mem.search(word, "team/x", mode=mode, as_of=from_epoch(first))}
    listed = mem.list("team/x", states=("active", "archived", "deleted"))
    assert secret.id not in {m.id for m in listed}
    assert mem.cube_info("team/x").memories == {"active": 1}


def test_what_was_derived_from_any_version_is_marked_stale_and_kept(mem, secret):
    from_first = mem.write("team/x", "summary of the first password", derived_from=[(secret.id, 1)])
    from_last = mem.write("team/x", "summary of the last password", derived_from=[(secret.id, 3)])
    unrelated = mem.write("team/x", "the cafeteria serves soup")
    since = mem.events(limit=1000).next_seq
    mem.purge(secret.id)
    assert mem.read(from_first.id).stale and mem.read(from_last.id).stale and not mem.read(unrelated.id).stale
    assert mem.read(from_last.id).content == "summary of the last password"  # their own text is theirs to keep
    stale = [e for e in mem.events(since=since, limit=1000).events if e.type == "stale"]
    assert {(e.memory_id, e.data["source"], e.data["purged"]) for e in stale} == {
        (from_first.id, secret.id, True), (from_last.id, secret.id, True)
    }


def test_purge_is_audited_and_evented_with_ids_only(mem, secret):
    bob = mem.as_principal("agent:bob")
    with pytest.raises(NotFound):
        bob.purge(secret.id)  # bob cannot read the cube: the memory is concealed
    mem.grant("team/x", "agent:bob", "read")
    with pytest.raises(PermissionDenied):
        bob.purge(secret.id)
    mem.purge(secret.id)
    records = [r for r in mem.audit("team/x", limit=1000) if r.memory_id == secret.id and r.op == "purge"]
    assert [(r.principal, r.outcome) for r in records] == [("agent:bob", "denied"), ("agent:bob", "denied"),
                                                           ("agent:alice", "ok")]
    assert records[-1].detail == "purged 3 versions"
    (event,) = [e for e in mem.events(limit=1000).events if e.type == "purged"]
    assert (event.memory_id, event.principal, event.data["versions"]) == (secret.id, "agent:alice", 3)
    logged = str([r.model_dump() for r in mem.audit("team/x", limit=1000)] + [e.model_dump() for e in mem.events(limit=1000).events])
    assert not any(word in logged for word in WORDS)


def test_dropping_a_cube_purges_every_memory_in_it(mem, kernel, secret):
    ids = [m.id for m in mem.list("team/x", states=("active", "archived", "deleted"))]
    mem.drop_cube("team/x")
    for memory_id in ids:
        assert not any(traces(kernel, memory_id).values())
    assert rows(kernel, "SELECT COUNT(*) FROM versions WHERE cube = 'team/x'") == [(0,)]


def test_a_tombstone_hides_from_search_but_keeps_every_version(mem, kernel, secret):
    tombstone = mem.delete(secret.id)
    assert tombstone.state == State.DELETED and tombstone.version == 4
    assert all(secret.id not in {h.memory.id for h in mem.search(w, "team/x")} for w in WORDS)
    assert [v.content.split()[-1] for v in mem.history(secret.id)] == [*WORDS, WORDS[2]]
    assert traces(kernel, secret.id)["versions"] == 4
    assert mem.restore(secret.id).state == State.ACTIVE


def test_purged_content_leaves_no_bytes_in_the_database_files(mem, kernel, secret):
    for i in range(20):
        mem.write("team/x", f"filler note {i} about the weather")
    mem.purge(secret.id)
    mem.write("team/x", "written after the purge")
    kernel.close()
    files = sorted(Path(kernel.store.path).parent.glob("memos.sqlite3*"))
    left = {f.name: [w for w in WORDS if w.encode() in f.read_bytes()] for f in files}
    assert not any(left.values()), left
