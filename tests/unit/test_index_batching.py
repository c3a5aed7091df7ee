"""Index updates run outside the kernel's lock (memos.kernel.indexer, "Locking"): while one write's entries are
being embedded, other syscalls are served; concurrent writers' entries are embedded together; and every write is
found by dense search as soon as it returns (read-your-writes), with nothing left in the outbox."""

from __future__ import annotations

import threading
import time

import pytest
from fakes import HashingEmbedder

from memos.client import Memos
from memos.kernel import Kernel
from memos.service import KernelService
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex, entry_id
from memos.transports import InProcessTransport


class GatedEmbedder(HashingEmbedder):
    """Records each batch; while ``gate`` is an unset Event, a call blocks until it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def embed(self, texts):
        self.batches.append(len(texts))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(0.02)  # a real embedder's cost, so that writers pile up
        return super().embed(texts)


@pytest.fixture
def embedder():
    return GatedEmbedder()


@pytest.fixture
def kernel(tmp_path, clock, embedder):
    k = Kernel(SqliteStore(tmp_path / "db.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(), embedder, clock=clock)
    yield k
    k.close()


@pytest.fixture
def mem(kernel):
    return Memos(InProcessTransport(KernelService(kernel)), "agent:alice")


def test_other_syscalls_are_served_while_a_write_is_embedded(mem, embedder):
    mem.create_cube("team/x")
    first = mem.write("team/x", "the first note")
    embedder.gate, embedder.entered = threading.Event(), threading.Event()
    writer = threading.Thread(target=lambda: mem.write("team/x", "a note being embedded"))
    writer.start()
    assert embedder.entered.wait(5)
    # The writer is inside embed (committed, not yet indexed): the kernel still answers.
    assert mem.read(first.id).content == "the first note"
    assert sorted(m.content for m in mem.list("team/x")) == ["a note being embedded", "the first note"]
    embedder.gate.set()
    writer.join(10)
    assert not writer.is_alive()


def test_concurrent_writers_are_indexed_in_batches_and_each_finds_its_own_write(mem, kernel, embedder):
    mem.create_cube("team/x")
    embedder.batches.clear()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                text = f"writer{n} note{i} zq{n}x{i}"
                m = mem.write("team/x", text)
                assert entry_id(m.id, 1) in kernel.index.ids(), text  # indexed before the write returned
                mem.search(f"zq{n}x{i}", "team/x", k=3, mode="dense")
        except BaseException as exc:  # noqa: BLE001 -- a worker thread hands its failure to the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert sum(embedder.batches) >= 40 and max(embedder.batches) > 1  # at least one batch held several writers
    assert kernel.store.pending_index_count() == 0
    assert len(kernel.index.ids()) == 40


def test_index_metadata_is_what_the_filtered_query_reads_and_older_entries_stay_consistent(mem, kernel):
    mem.create_cube("team/x")
    note = mem.write("team/x", "a note")
    eid = entry_id(note.id, note.version)
    held = kernel.index.get_metadata([eid])[eid]
    assert "memory_id" not in held and "version" not in held  # in the entry's id already
    assert {"cube", "state", "valid_from", "valid_to", "trust", "kind", "author", "source"} <= held.keys()
    # An entry written before 2026-12-06 carries the two keys as well: a deep check finds nothing to repair.
    kernel.index.set_metadata([eid], [{**held, "memory_id": note.id, "version": note.version}])
    report = kernel.indexer.reconcile(deep=True)
    assert report.consistent and report.expected == report.indexed == 1
    # A real difference is still found and repaired.
    kernel.index.set_metadata([eid], [{**held, "state": "archived"}])
    assert kernel.indexer.reconcile(deep=True).fixed_metadata == 1
    assert kernel.index.get_metadata([eid])[eid]["state"] == "active"
