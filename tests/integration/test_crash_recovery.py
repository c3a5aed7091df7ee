"""Durability: a write acknowledged before SIGKILL is there and searchable after restart; a crash between the
SQLite commit and the vector-index update is repaired at start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from memos.client import Memos
from memos.config import Settings
from memos.errors import BackendError
from memos.kernel.factory import open_kernel
from memos.service import KernelService
from memos.transports import InProcessTransport

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import sys, time
    from memos.client import Memos
    mem = Memos.embedded(sys.argv[1], principal="agent:writer")
    mem.create_cube("team/crash", exist_ok=True)
    for i in range(int(sys.argv[2])):
        m = mem.write("team/crash", f"acknowledged fact number {i} about lighthouses")
        print(m.id, flush=True)   # the acknowledgement: printed only after execute() returned
    print("DONE", flush=True)
    time.sleep(600)               # wait to be killed, with everything still open
    """
)


def test_sigkill_right_after_acknowledged_writes_loses_nothing(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(home), "5"], stdout=subprocess.PIPE, text=True)
    acked = []
    for line in proc.stdout:
        if line.strip() == "DONE":
            break
        acked.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert len(acked) == 5

    mem = Memos.embedded(home, principal="agent:writer")
    try:
        for memory_id in acked:
            assert mem.read(memory_id).version == 1
        hits = mem.search("lighthouse facts", "team/crash", k=10, mode="dense")
        assert {h.memory.id for h in hits} == set(acked)
    finally:
        mem.close()


def test_crash_between_commit_and_index_update_is_repaired_at_start(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "home", sqlite_synchronous="NORMAL")
    kernel = open_kernel(settings)
    mem = Memos(InProcessTransport(KernelService(kernel)), "agent:writer")
    mem.create_cube("team/outbox")

    def index_down(entries):
        raise BackendError("simulated index outage")

    monkeypatch.setattr(kernel.index, "upsert", index_down)
    m = mem.write("team/outbox", "the ferry leaves at dawn")  # acknowledged: SQLite committed
    assert kernel.store.pending_index_count() > 0
    assert mem.search("ferry", "team/outbox", mode="dense") == ()
    assert [h.memory.id for h in mem.search("ferry", "team/outbox", mode="lexical")] == [m.id]
    monkeypatch.undo()
    kernel.close()

    restarted = Memos.embedded(settings.home, principal="agent:writer")
    try:
        assert [h.memory.id for h in restarted.search("boat departure time", "team/outbox", mode="dense")] == [m.id]
    finally:
        restarted.close()


def test_doctor_repair_rebuilds_a_lost_index(tmp_path):
    import shutil

    settings = Settings(home=tmp_path / "home", sqlite_synchronous="NORMAL")
    mem = Memos.embedded(settings.home, principal="agent:writer")
    mem.create_cube("team/doctor")
    ids = [mem.write("team/doctor", f"note {i} on glaciers").id for i in range(3)]
    mem.close()
    shutil.rmtree(settings.chroma_path)  # the derived index is lost entirely

    service = KernelService(open_kernel(settings))  # start-up reconciles
    try:
        report = service.doctor(repair=True)
        assert report["sqlite_integrity"] == "ok"
        assert report["reconcile"]["expected"] == 3 and report["reconcile"]["added"] == 0
        mem = Memos(InProcessTransport(service), "agent:writer")
        assert {h.memory.id for h in mem.search("glaciers", "team/doctor", mode="dense")} == set(ids)
    finally:
        service.close()


BATCH_CHILD = textwrap.dedent(
    """
    import sys
    from memos.client import Memos
    mem = Memos.embedded(sys.argv[1], principal="agent:writer")
    mem.create_cube("team/bulk", exist_ok=True)
    batch = 0
    while True:                   # killed somewhere in here, possibly in the middle of a write_many
        result = mem.write_many([f"batch {batch} item {i} about harbours" for i in range(40)], cube="team/bulk")
        print(" ".join(o.id for o in result.results), flush=True)   # the acknowledgement
        batch += 1
    """
)


def test_sigkill_during_write_many_keeps_every_acknowledged_item_and_no_half_item(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", BATCH_CHILD, str(home)], stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    for line in proc.stdout:
        acked.extend(line.split())
        if len(acked) >= 3 * 40:
            break
    os.kill(proc.pid, signal.SIGKILL)  # the child is writing its next batch
    proc.wait(timeout=30)

    mem = Memos.embedded(home, principal="agent:writer")
    try:
        stored = []
        while page := mem.list("team/bulk", limit=1000, offset=len(stored)):
            stored.extend(page)
        ids = {m.id for m in stored}
        assert set(acked) <= ids
        assert len(stored) % 40 == 0  # a batch is one transaction: all of it or none of it
        for m in stored:
            assert m.version == 1 and m.content.endswith("about harbours") and len(mem.history(m.id)) == 1
        hits = mem.search("batch 0 item 7 about harbours", "team/bulk", k=5, mode="dense")
        assert hits and hits[0].memory.content == "batch 0 item 7 about harbours"
    finally:
        mem.close()
