"""Payload lifetime follows versions, not kinds (issue 13): a KV-cache or adapter file lives as long as a version
that can become current again references it; demotion keeps it until the activation budget evicts it; a rollback
to a version whose cache was evicted rebuilds it, and one whose adapter is gone is refused with a typed error; a
version pointing at a missing file is never committed. The model host is the scripted FakeModelPort."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fakes import FakeModelPort, HashingEmbedder

from memos.errors import InvalidState
from memos.kernel import Kernel
from memos.kernel.budget import ActivationBudget
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.types import Kind


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


def intact(memory) -> bool:
    """The memory's payload file is on disk and is the file its header names (sha256)."""
    path = Path(memory.payload.path)
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == memory.payload.sha256


def test_rollback_across_archive_restore_and_a_second_migration_keeps_every_cache(mem, kernel):
    """The issue's scenario: write, migrate (v2), archive (v3), restore (v4), migrate (v5), rollback to v2."""
    mem.create_cube("team/x")
    m = mem.write("team/x", "The vault code is 4417.")
    v2 = mem.migrate([m.id], "activation")[0]
    mem.archive(m.id)
    mem.restore(m.id)
    v5 = mem.migrate([m.id], "activation")[0]
    v6 = mem.rollback(m.id, to_version=2)
    assert (v6.version, v6.kind) == (6, Kind.ACTIVATION)
    assert intact(v6) and intact(v2) and intact(v5)  # v5 can become current again too
    answer = mem.generate("What is the vault code?", memory=[m.id])  # was: corrupt, for every reader
    assert answer.text == "1 kv, 0 text"
    assert intact(mem.rollback(m.id, to_version=5))


def test_rollback_of_a_retrained_adapter_keeps_both_adapters(mem, kernel):
    """The issue's parametric scenario: distill, distill(replaces=P), rollback P to v1."""
    mem.create_cube("team/facts")
    ids = [mem.write("team/facts", t).id for t in ("Mara keeps the key in Trumwick.", "The vault code is 4417.")]
    p1 = mem.distill(ids, "team/facts")
    mem.update(ids[0], content="Mara keeps the key in Pelmark now.")
    p2 = mem.distill(replaces=p1.id)
    p3 = mem.rollback(p1.id, to_version=1)
    assert p3.version == 3 and p3.payload == p1.payload
    assert intact(p1) and intact(p2)
    assert mem.generate("Where is the key?", adapter=p1.id, allow_stale=True).text == "0 kv, 0 text"
    assert intact(mem.rollback(p1.id, to_version=2))


def test_a_demoted_cache_is_kept_until_the_budget_evicts_it_and_a_rollback_rebuilds_it(mem, kernel):
    kernel.budgets = ActivationBudget(disk_bytes=2500)  # FakeModelPort payloads are 1000 bytes
    mem.create_cube("team/x")
    m = mem.write("team/x", "The vault code is 4417.")
    v2 = mem.migrate([m.id], "activation")[0]
    mem.archive(m.id)  # v3 plaintext: v2's cache stays on disk (it can become current again)
    assert intact(v2)
    mem.restore(m.id)
    v5 = mem.migrate([m.id], "activation")[0]
    other = mem.write("team/x", "Orsk was born in Piltravey.")
    mem.migrate([other.id], "activation")  # 3 files > 2500 bytes: the cache no current version uses goes first
    assert not Path(v2.payload.path).exists() and intact(v5)
    assert [x.kind for x in mem.list("team/x")] == [Kind.ACTIVATION, Kind.ACTIVATION]  # nobody was demoted
    assert len(mem.history(m.id)) == 5  # evicting an old version's file writes no version
    v6 = mem.rollback(m.id, to_version=2)
    assert (v6.kind, v6.content) == (Kind.ACTIVATION, v2.content)
    assert v6.payload.path != v2.payload.path and intact(v6)  # rebuilt, under a new name
    assert mem.generate("What is the vault code?", memory=[m.id]).text == "1 kv, 0 text"


def test_a_rollback_to_an_evicted_cache_without_a_model_host_is_refused_and_commits_nothing(mem, kernel):
    kernel.budgets = ActivationBudget(disk_bytes=2500)
    mem.create_cube("team/x")
    m = mem.write("team/x", "The vault code is 4417.")
    v2 = mem.migrate([m.id], "activation")[0]
    mem.archive(m.id)
    mem.restore(m.id)
    mem.migrate([m.id], "activation")
    mem.migrate([mem.write("team/x", "Orsk was born in Piltravey.").id], "activation")
    assert not Path(v2.payload.path).exists()
    kernel.model = None
    with pytest.raises(InvalidState, match="evicted"):
        mem.rollback(m.id, to_version=2)
    assert len(mem.history(m.id)) == 5


def test_a_rollback_to_an_adapter_whose_file_is_gone_is_refused_and_commits_nothing(mem, kernel):
    mem.create_cube("team/facts")
    ids = [mem.write("team/facts", t).id for t in ("Mara keeps the key in Trumwick.", "The vault code is 4417.")]
    p1 = mem.distill(ids, "team/facts")
    mem.distill(replaces=p1.id)
    Path(p1.payload.path).unlink()  # lost outside memos (a person, a disk)
    with pytest.raises(InvalidState, match="adapter file of version 1 is missing"):
        mem.rollback(p1.id, to_version=1)
    assert [v.version for v in mem.history(p1.id)] == [1, 2]


def test_purge_and_drop_cube_remove_the_files_of_every_version(mem, kernel):
    mem.create_cube("team/x")
    m = mem.write("team/x", "The vault code is 4417.")
    v2 = mem.migrate([m.id], "activation")[0]
    mem.archive(m.id)
    mem.restore(m.id)
    v5 = mem.migrate([m.id], "activation")[0]
    mem.purge(m.id)
    assert not Path(v2.payload.path).exists() and not Path(v5.payload.path).exists()
    n = mem.write("team/x", "Orsk was born in Piltravey.")
    n2 = mem.migrate([n.id], "activation")[0]
    mem.migrate([n.id], "plaintext")
    assert intact(n2)  # demoted: kept
    mem.drop_cube("team/x")
    assert not Path(n2.payload.path).exists()
    assert not list(Path(kernel.blob_dir).rglob("*.safetensors"))


def test_a_restart_keeps_the_files_of_versions_that_can_become_current(mem, kernel, tmp_path, clock, model_port):
    mem.create_cube("team/x")
    m = mem.write("team/x", "The vault code is 4417.")
    v2 = mem.migrate([m.id], "activation")[0]
    mem.migrate([m.id], "plaintext")
    kernel.close()
    again = Kernel(SqliteStore(tmp_path / "memos.sqlite3"), InMemoryVectorIndex(), HashingEmbedder(), clock=clock,
                   model=model_port)
    try:
        assert intact(v2)  # not an orphan: version 2 references it
    finally:
        again.close()
