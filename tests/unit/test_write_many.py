"""write_many: one transaction for N memories, embedded in batches and indexed in one call; items fail alone and are
never half written."""

from __future__ import annotations

import pytest

from memos import syscalls as sc
from memos.errors import BackendError, InvalidSyscall
from memos.types import Source, Trust


def _commits(kernel, monkeypatch) -> list[str]:
    seen: list[str] = []
    real = kernel.store._exec

    def spy(sql, params=()):
        if sql in ("COMMIT", "BEGIN IMMEDIATE"):
            seen.append(sql)
        return real(sql, params)

    monkeypatch.setattr(kernel.store, "_exec", spy)
    return seen


def test_writes_every_item_with_its_own_version_and_provenance(mem):
    mem.create_cube("team/bulk")
    result = mem.write_many(
        [f"fact {i} about the harbour" for i in range(5)] + [{"content": "a tool said so", "source": "tool"}],
        cube="team/bulk",
    )
    assert (result.written, result.failed) == (6, 0)
    ids = [o.id for o in result.results]
    assert len(set(ids)) == 6 and all(o.version == 1 for o in result.results)
    memories = [mem.read(i) for i in ids]
    assert [m.content for m in memories[:5]] == [f"fact {i} about the harbour" for i in range(5)]
    assert all(m.provenance.author == "agent:alice" and m.provenance.operation == "write" for m in memories)
    assert memories[5].provenance.source == Source.TOOL and memories[5].provenance.trust == Trust.UNTRUSTED
    assert {h.memory.id for h in mem.search("harbour fact", "team/bulk", k=10, mode="dense")} == set(ids[:5]) | {ids[5]}
    assert {h.memory.id for h in mem.search("harbour", "team/bulk", k=10, mode="lexical")} == set(ids[:5])
    written = [e for e in mem.events(types=["written"]).events if e.cube == "team/bulk"]
    assert {e.memory_id for e in written} == set(ids)


def test_one_transaction_one_embedding_call_and_one_index_call_whatever_the_count(kernel, mem, monkeypatch):
    mem.create_cube("team/bulk")
    embed_calls, upserts = [], []
    real_embed, real_upsert = kernel.embedder.embed, kernel.index.upsert
    monkeypatch.setattr(kernel.embedder, "embed", lambda texts: embed_calls.append(len(texts)) or real_embed(texts))
    monkeypatch.setattr(kernel.index, "upsert", lambda entries: upserts.append(len(entries)) or real_upsert(entries))
    commits = _commits(kernel, monkeypatch)
    mem.write_many([f"small batch {i}" for i in range(3)], cube="team/bulk")
    small = list(commits)
    commits.clear()
    mem.write_many([f"large batch {i}" for i in range(300)], cube="team/bulk")
    assert commits == small  # the write's transaction and the outbox acknowledgement, for 3 or for 300 items
    assert embed_calls == [3, 300] and upserts == [3, 300]


def test_failed_items_are_reported_in_place_and_the_others_written(mem):
    mem.create_cube("team/bulk")
    mem.as_principal("agent:bob").create_cube("team/bobs")
    secret = mem.as_principal("agent:bob").write("team/bobs", "bob's private note")
    items = [
        {"content": "first good item"},
        {"content": "bad tag", "tags": ["\x00"]},
        {"content": "no right there", "cube": "team/bobs"},
        {"content": "x" * (sc.MAX_CONTENT_BYTES + 1)},
        {"content": "not a write", "op": "delete"},
        {"content": "derived from what it cannot see", "derived_from": [{"id": secret.id, "version": 1}]},
        {"content": "no such cube", "cube": "team/nowhere"},
        {"content": "last good item", "tags": ["ok"]},
    ]
    result = mem.write_many(items, cube="team/bulk")
    assert (result.written, result.failed) == (2, 6)
    codes = [o.error["code"] if o.error else "ok" for o in result.results]
    assert codes == ["ok", "invalid", "denied", "too_large", "invalid", "not_found", "not_found", "ok"]
    assert [o.error["details"]["item"] for o in result.results if o.error] == [1, 2, 3, 4, 5, 6]
    assert sorted(m.content for m in mem.list("team/bulk")) == ["first good item", "last good item"]
    failures = [r for r in mem.audit("team/bulk") if r.op == "write_many" and r.outcome != "ok"]
    assert len(failures) >= 3  # items refused in this cube are audited as failures


def test_an_item_that_fails_midway_leaves_nothing_of_itself(kernel, mem, monkeypatch):
    mem.create_cube("team/bulk")
    real = kernel.store.append_version

    def fail_second(**fields):
        if fields["content"] == "second":
            raise BackendError("disk hiccup on the second item")
        return real(**fields)

    monkeypatch.setattr(kernel.store, "append_version", fail_second)
    result = mem.write_many(["first", "second", "third"], cube="team/bulk")
    assert [o.ok for o in result.results] == [True, False, True]
    assert result.results[1].error["code"] == "backend"
    rows = kernel.store._all("SELECT COUNT(*) FROM memories WHERE cube = 'team/bulk'")[0][0]
    assert rows == 2  # the memory row inserted before the failure was rolled back with its item
    assert kernel.store.pending_index_count() == 0
    assert sorted(m.content for m in mem.list("team/bulk")) == ["first", "third"]


def test_a_failed_commit_fails_the_whole_call_and_writes_nothing(kernel, mem, monkeypatch):
    mem.create_cube("team/bulk")
    real = kernel.store._exec

    def refuse_commit(sql, params=()):
        if sql == "COMMIT":
            raise BackendError("disk full")
        return real(sql, params)

    monkeypatch.setattr(kernel.store, "_exec", refuse_commit)
    with pytest.raises(BackendError):
        mem.write_many(["one", "two"], cube="team/bulk")
    monkeypatch.undo()
    assert mem.list("team/bulk") == ()


def test_shape_of_the_call_is_checked(mem):
    mem.create_cube("team/bulk")
    with pytest.raises(InvalidSyscall):
        mem.write_many([], cube="team/bulk")
    with pytest.raises(InvalidSyscall):
        mem.write_many(["x"] * (sc.MAX_WRITE_MANY + 1), cube="team/bulk")
