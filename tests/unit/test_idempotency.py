"""Idempotency keys on writes (memos.kernel.idempotency): a write resent after it committed returns the memory it
wrote, never a second one; the key commits with the write or not at all. Issue 13: a client that retried a write
whose answer was lost (kernel actor killed after the commit) wrote it twice."""

from __future__ import annotations

import pytest

from memos import syscalls as sc
from memos.errors import InvalidSyscall, NotFound, PermissionDenied


def write(kernel, principal, key, content="the ferry leaves at dawn", cube="team/x"):
    return kernel.execute(principal, {"op": "write", "cube": cube, "content": content, "idempotency_key": key})


def memories(kernel, cube="team/x"):
    return kernel.execute("system", {"op": "list", "cube": cube, "states": ["active"]}).memories


def test_a_resent_write_returns_the_memory_it_wrote_and_writes_nothing(kernel, mem):
    mem.create_cube("team/x")
    first = write(kernel, "agent:alice", "k-0000000001")
    events_before = kernel.execute("system", {"op": "events"}).events
    again = write(kernel, "agent:alice", "k-0000000001")
    assert again == first
    assert [m.id for m in memories(kernel)] == [first.id]
    assert kernel.execute("system", {"op": "events"}).events == events_before  # no second "written" event


def test_the_key_belongs_to_its_principal(kernel, mem):
    mem.create_cube("team/x")
    mem.grant("team/x", "agent:bob", "write")
    alice = write(kernel, "agent:alice", "k-0000000002")
    bob = write(kernel, "agent:bob", "k-0000000002")
    assert alice.id != bob.id and bob.provenance.author == "agent:bob"


def test_a_key_reused_for_another_request_is_refused(kernel, mem):
    mem.create_cube("team/x")
    write(kernel, "agent:alice", "k-0000000003")
    with pytest.raises(InvalidSyscall, match="already used for a different write"):
        write(kernel, "agent:alice", "k-0000000003", content="something else")
    assert len(memories(kernel)) == 1


def test_a_write_that_failed_left_no_key_behind(kernel, mem):
    mem.create_cube("team/x")
    with pytest.raises(PermissionDenied):
        write(kernel, "agent:bob", "k-0000000004")
    mem.grant("team/x", "agent:bob", "write")
    assert write(kernel, "agent:bob", "k-0000000004").provenance.author == "agent:bob"
    assert len(memories(kernel)) == 1


def test_a_resent_write_still_needs_the_right_it_needed(kernel, mem):
    mem.create_cube("team/x")
    mem.grant("team/x", "agent:bob", "write")
    write(kernel, "agent:bob", "k-0000000005")
    mem.revoke("team/x", "agent:bob")
    with pytest.raises(PermissionDenied):
        write(kernel, "agent:bob", "k-0000000005")


def test_a_resent_write_of_a_purged_memory_is_not_found_not_resurrected(kernel, mem):
    mem.create_cube("team/x")
    first = write(kernel, "agent:alice", "k-0000000006")
    mem.purge(first.id)
    with pytest.raises(NotFound, match="since been purged"):
        write(kernel, "agent:alice", "k-0000000006")
    assert memories(kernel) == ()
    # The purge erased the request's hash with the content; only the ids stay, as in the audit log.
    assert kernel.store._all("SELECT request_hash FROM idempotency") == [("",)]


def test_keys_are_forgotten_after_a_day(kernel, mem, clock):
    mem.create_cube("team/x")
    first = write(kernel, "agent:alice", "k-0000000007")
    clock.advance(sc.IDEMPOTENCY_KEEP_S + 1)
    write(kernel, "agent:alice", "k-0000000008", content="another")  # any write prunes expired keys
    assert write(kernel, "agent:alice", "k-0000000007").id != first.id


def test_the_client_gives_every_write_its_own_key(mem):
    mem.create_cube("team/x")
    sent = []
    call = mem.transport.call
    mem.transport.call = lambda principal, syscall, trace_id=None: sent.append(syscall) or call(principal, syscall, trace_id)
    a, b = mem.write("team/x", "same text"), mem.write("team/x", "same text")
    assert a.id != b.id
    keys = [s["idempotency_key"] for s in sent]
    assert all(keys) and len(set(keys)) == 2


def test_only_reads_and_keyed_writes_are_retry_safe():
    assert sc.retry_safe({"op": "search"}) and sc.retry_safe({"op": "write", "idempotency_key": "k-0000000009"})
    assert not sc.retry_safe({"op": "write"}) and not sc.retry_safe({"op": "update"})


def test_a_resent_write_many_writes_each_item_once(kernel, mem):
    mem.create_cube("team/x")
    items = [{"cube": "team/x", "content": f"fact {i}", "idempotency_key": f"k-batch-{i:04d}"} for i in range(3)]
    first = kernel.execute("agent:alice", {"op": "write_many", "items": items})
    again = kernel.execute("agent:alice", {"op": "write_many", "items": [*items, {"cube": "team/x", "content": "new",
                                                                                  "idempotency_key": "k-batch-0003"}]})
    assert [o.id for o in again.results[:3]] == [o.id for o in first.results] and again.results[3].ok
    assert len(memories(kernel)) == 4


def test_the_client_keys_every_item_of_a_write_many(mem):
    mem.create_cube("team/x")
    sent = []
    call = mem.transport.call
    mem.transport.call = lambda principal, syscall, trace_id=None: sent.append(syscall) or call(principal, syscall, trace_id)
    mem.write_many(["a", "b"], cube="team/x")
    keys = [item["idempotency_key"] for item in sent[0]["items"]]
    assert all(keys) and len(set(keys)) == 2 and sc.retry_safe(sent[0])
    assert not sc.retry_safe({"op": "write_many", "items": [{"cube": "team/x", "content": "a"}]})
