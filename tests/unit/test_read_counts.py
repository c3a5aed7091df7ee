"""Reads are counted in memory and written in batches: a search is not a durable write, what callers and policies
see still counts every read, and nothing pending is lost at shutdown."""

from __future__ import annotations

from memos import syscalls as sc
from memos.kernel import Kernel
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex


def _access_rows(kernel) -> int:
    return kernel.store._all("SELECT COUNT(*) FROM access_log")[0][0]


def test_a_search_writes_nothing_until_the_reads_are_flushed(kernel, mem):
    kernel.reads.flush_interval_s = 3600
    mem.create_cube("team/r")
    m = mem.write("team/r", "the lighthouse keeper counts ships")
    changes = kernel.store._db.total_changes
    for _ in range(3):
        assert [h.memory.id for h in mem.search("lighthouse", "team/r")] == [m.id]
    assert kernel.store._db.total_changes == changes  # no row written: no durable transaction per search
    assert _access_rows(kernel) == 0
    seen = mem.read(m.id)
    assert seen.reads == 4 and seen.last_read_at is not None  # pending reads are counted in what callers see
    assert kernel.flush_reads() == 8  # 4 reads and 4 audit records, in one transaction
    assert _access_rows(kernel) == 4
    assert mem.read(m.id).reads == 5  # stored 4 + this one, pending
    searches = [r for r in mem.audit("team/r") if r.op == "search"]
    assert len(searches) == 3


def test_policies_see_every_read_in_their_snapshot(kernel, mem, clock):
    kernel.reads.flush_interval_s = 3600
    mem.create_cube("team/r")
    m = mem.write("team/r", "the ferry timetable changed")
    for _ in range(5):
        clock.advance(1)
        mem.search("ferry timetable", "team/r")
    state = kernel.execute("system", sc.Snapshot(cubes=("team/r",), read_window_s=3600))
    assert len(state.read_times[m.id]) == 5  # the snapshot flushed them first
    assert {x.id: x.reads for x in state.memories}[m.id] == 5
    assert len(kernel.reads) == 0


def test_pending_reads_are_written_at_shutdown(tmp_path, clock):
    from fakes import HashingEmbedder

    def open_kernel() -> Kernel:
        return Kernel(SqliteStore(tmp_path / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(),
                      HashingEmbedder(), clock=clock, read_flush_s=3600)

    kernel = open_kernel()
    kernel.execute("agent:alice", sc.CreateCube(name="team/r"))
    m = kernel.execute("agent:alice", sc.Write(cube="team/r", content="read me twice"))
    kernel.execute("agent:alice", sc.Read(id=m.id))
    kernel.execute("agent:alice", sc.Search(query="read me", cubes=("team/r",)))
    assert len(kernel.reads) == 4
    kernel.close()

    again = open_kernel()
    try:
        stored = again.store.get_version(m.id)
        assert stored.reads == 2 and stored.last_read_at is not None
        assert again.store.reads_since(m.id, 0) == 2
    finally:
        again.close()


def test_reads_are_flushed_when_a_syscall_ends_after_the_interval(kernel, mem):
    kernel.reads.flush_interval_s = 0.0
    mem.create_cube("team/r")
    m = mem.write("team/r", "flush me soon")
    mem.read(m.id)
    assert len(kernel.reads) == 0 and _access_rows(kernel) == 1


def test_reads_of_a_memory_purged_before_the_flush_leave_no_trace(kernel, mem):
    mem.create_cube("team/r")
    m = mem.write("team/r", "soon gone")
    mem.read(m.id)
    mem.purge(m.id)
    kernel.flush_reads()
    assert _access_rows(kernel) == 0


def test_the_service_flushes_reads_when_no_syscall_comes(kernel, mem):
    import time

    kernel.reads.flush_interval_s = 0.1
    mem.create_cube("team/r")
    m = mem.write("team/r", "idle afterwards")
    kernel.reads.flush_interval_s = 3600
    mem.read(m.id)
    assert _access_rows(kernel) == 0
    kernel.reads.flush_interval_s = 0.1
    deadline = time.monotonic() + 10
    while _access_rows(kernel) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _access_rows(kernel) == 1


def test_a_change_writes_the_pending_reads_first_so_the_audit_log_keeps_its_order(kernel, mem):
    kernel.reads.flush_interval_s = 3600
    mem.create_cube("team/r")
    m = mem.write("team/r", "read, then changed")
    mem.read(m.id)
    mem.search("changed", "team/r")
    mem.update(m.id, content="changed after two reads")
    assert len(kernel.reads) == 0 and _access_rows(kernel) == 2  # in the update's transaction
    ops = [r.op for r in mem.audit("team/r") if r.memory_id in (m.id, None) or r.op == "search"]
    assert ops[-3:] == ["read", "search", "update"]
