"""Activation memory through the kernel, on the real model: migrate, inject, budget and eviction, refusal of
damaged or foreign payloads, demotion, and crash recovery of a migration."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memos.client import Memos
from memos.config import Settings
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.kernel.factory import open_kernel
from memos.service import KernelService
from memos.transports import InProcessTransport
from memos.types import Kind

pytestmark = pytest.mark.integration

FACT = "Mara Quill keeps the brass key in the lighthouse. Tomas Reyk keeps the red notebook in the cellar."
QUESTION = "Where does Tomas Reyk keep the red notebook?"


def client(tmp_path: Path, model_service, **settings) -> Memos:
    cfg = Settings(home=tmp_path / "home", sqlite_synchronous="NORMAL", **settings)
    kernel = open_kernel(cfg, model=model_service)
    return Memos(InProcessTransport(KernelService(kernel)), "agent:alice")


@pytest.fixture
def mem(tmp_path, model_service):
    m = client(tmp_path, model_service)
    m.create_cube("team/kv")
    yield m
    m.close()


def sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_migrate_to_activation_keeps_identity_text_and_provenance(mem, model_service):
    m = mem.write("team/kv", FACT)
    (a,) = mem.migrate(m.id, "activation")
    assert (a.id, a.version, a.kind) == (m.id, 2, Kind.ACTIVATION)
    assert a.content == FACT and a.payload is not None and Path(a.payload.path).exists()
    assert a.fingerprint == model_service.fingerprint()
    assert [(r.id, r.version) for r in a.provenance.derived_from] == [(m.id, 1)]
    assert a.provenance.operation == "migrate:activation"
    assert [v.kind for v in mem.history(m.id)] == [Kind.PLAINTEXT, Kind.ACTIVATION]
    assert mem.search("red notebook", "team/kv")[0].memory.id == m.id  # still searchable
    assert any(e.type == "migrated" for e in mem.events().events)


def test_injected_cache_gives_the_same_tokens_as_the_text_and_is_never_mutated(mem):
    kv_memory = mem.write("team/kv", FACT)
    text_memory = mem.write("team/kv", FACT)
    (a,) = mem.migrate(kv_memory.id, "activation")
    before = (sha(a.payload.path), Path(a.payload.path).stat().st_size)
    with_kv = [mem.generate(QUESTION, memory=[kv_memory.id], max_new_tokens=16) for _ in range(2)]
    with_text = mem.generate(QUESTION, memory=[text_memory.id], max_new_tokens=16)
    assert with_kv[0].plan.items[0].use == "kv" and with_text.plan.items[0].use == "text"
    assert with_kv[0].cached_tokens > 0 and with_text.cached_tokens == 0
    assert {r.text for r in with_kv} == {with_text.text}
    assert (sha(a.payload.path), Path(a.payload.path).stat().st_size) == before
    assert mem.read(kv_memory.id).payload.sha256 == before[0]


def test_assemble_context_prefers_the_cache_and_explains(mem):
    a = mem.write("team/kv", FACT)
    mem.migrate(a.id, "activation")
    mem.write("team/kv", "The cafeteria serves soup on Mondays.")
    plan = mem.assemble_context(QUESTION, "team/kv", token_budget=64, k=2)
    first = plan.items[0]
    assert (first.memory_id, first.use, first.tokens) == (a.id, "kv", 0) and first.cached_tokens > 0
    assert "activation cache" in first.reason and not plan.estimated


def test_corrupted_or_foreign_payloads_are_refused(mem, model_service, tmp_path):
    m = mem.write("team/kv", FACT)
    (a,) = mem.migrate(m.id, "activation")
    path = Path(a.payload.path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # flip one bit of the tensors
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptPayload) as err:
        mem.generate(QUESTION, memory=[m.id])
    # The error names the file from the data dir's blobs/ on, never the server's absolute path.
    assert f"blobs/activation/{path.name}" in str(err.value) and str(path) not in str(err.value)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CorruptPayload, match="truncated"):
        mem.generate(QUESTION, memory=[m.id])

    # A sound file built for another model: its own header says so, whatever the database says.
    from memos.cubes.activation import KVPayload, save_kv

    payload = model_service.host.build_kv(FACT)
    fp = payload.fingerprint.model_copy(update={"model_id": "another-model"})
    foreign = KVPayload(fingerprint=fp, memory_messages=payload.memory_messages, token_ids=payload.token_ids,
                        keys=payload.keys, values=payload.values)
    ref = save_kv(foreign, path)
    db = sqlite3.connect(tmp_path / "home" / "memos.sqlite3")
    db.execute("UPDATE versions SET payload = json_set(payload, '$.sha256', ?, '$.size_bytes', ?) WHERE memory_id = ? "
               "AND version = 2", (ref.sha256, ref.size_bytes, m.id))
    db.commit()
    db.close()
    model_service.forget([str(path)])
    with pytest.raises(FingerprintMismatch, match="model_id"):
        mem.generate(QUESTION, memory=[m.id])


def test_budget_of_two_caches_evicts_the_least_recently_used_unpinned(tmp_path, model_service):
    mem = client(tmp_path, model_service, activation_max_memories=2)
    try:
        mem.create_cube("team/kv")
        ids = [mem.write("team/kv", f"Fact {i}: the vault code of branch {i} is {1000 + i}.").id for i in range(4)]
        mem.pin(ids[0])
        mem.migrate(ids[0], "activation")
        mem.migrate(ids[1], "activation")
        mem.read(ids[0])
        mem.migrate(ids[2], "activation")  # over budget: ids[1] is the LRU unpinned one
        kinds = {i: mem.read(i).kind for i in ids[:3]}
        assert kinds == {ids[0]: Kind.ACTIVATION, ids[1]: Kind.PLAINTEXT, ids[2]: Kind.ACTIVATION}
        evicted = [e for e in mem.events(limit=1000).events if e.type == "evicted"]
        assert [(e.memory_id, e.data["tier"]) for e in evicted] == [(ids[1], "disk")]
        assert mem.search("vault code of branch 1", "team/kv", k=1)[0].memory.id == ids[1]
        mem.migrate(ids[3], "activation")  # ids[2] goes; the pinned ids[0] never does
        assert mem.read(ids[0]).kind == Kind.ACTIVATION and mem.read(ids[2]).kind == Kind.PLAINTEXT
        assert len(list((tmp_path / "home" / "blobs" / "activation").iterdir())) == 2
    finally:
        mem.close()


def test_changing_the_text_demotes_and_keeps_the_cache_for_a_rollback(mem):
    m = mem.write("team/kv", FACT)
    (a,) = mem.migrate(m.id, "activation")
    u = mem.update(m.id, content=FACT + " Both moved to Oslo.")
    assert u.kind == Kind.PLAINTEXT and u.payload is None and Path(a.payload.path).exists()  # version 2 needs it
    assert mem.update(m.id, tags=["x"]).kind == Kind.PLAINTEXT
    (b,) = mem.migrate(m.id, "activation")
    assert mem.update(m.id, tags=["y"]).kind == Kind.ACTIVATION  # tags do not change the cached text
    (back,) = mem.migrate(m.id, "plaintext")
    assert back.kind == Kind.PLAINTEXT and Path(b.payload.path).exists()
    mem.purge(m.id)
    assert not Path(a.payload.path).exists() and not Path(b.payload.path).exists()


def test_rollback_after_archive_restore_and_remigration_serves_the_cache_on_the_real_model(tmp_path, model_service):
    """Issue 13's scenario on the real host: write, migrate (v2), archive (v3), restore (v4), migrate (v5), rollback
    to v2: generate injects the cache (it answered corrupt); then, the cache evicted by the budget, a rollback to v5
    rebuilds it."""
    mem = client(tmp_path, model_service, activation_max_memories=1)
    try:
        mem.create_cube("team/kv")
        m = mem.write("team/kv", FACT)
        mem.migrate(m.id, "activation")
        mem.archive(m.id)
        mem.restore(m.id)
        (v5,) = mem.migrate(m.id, "activation")
        v6 = mem.rollback(m.id, to_version=2)
        assert v6.kind == Kind.ACTIVATION and sha(v6.payload.path) == v6.payload.sha256
        answer = mem.generate(QUESTION, memory=[m.id], max_new_tokens=8)
        assert answer.cached_tokens > 0 and [i.use for i in answer.plan.items] == ["kv"]
        Path(v5.payload.path).unlink()  # as if the budget had evicted it
        v7 = mem.rollback(m.id, to_version=5)
        assert v7.payload.path != v5.payload.path and sha(v7.payload.path) == v7.payload.sha256
        assert mem.generate(QUESTION, memory=[m.id], max_new_tokens=8).cached_tokens > 0
    finally:
        mem.close()


CRASH_CHILD = textwrap.dedent(
    """
    import sys, time
    from memos.config import Settings
    from memos.kernel.factory import open_kernel
    from memos.models.loader import ModelSpec
    from memos.models.service import ModelService

    home, cache, memory_id = sys.argv[1], sys.argv[2], sys.argv[3]
    service = ModelService(ModelSpec(cache_dir=cache))
    real_build = service.build_activation

    def build_then_hang(text, path):
        built = real_build(text, path)      # the payload file is on disk, the version is not written yet
        print("BUILT", path, flush=True)
        time.sleep(600)
        return built

    service.build_activation = build_then_hang
    kernel = open_kernel(Settings(home=home, sqlite_synchronous="NORMAL"), model=service)
    kernel.execute("agent:alice", {"op": "migrate", "ids": [memory_id], "to": "activation"})
    """
)


def test_killed_mid_migration_leaves_the_memory_unmigrated_and_no_orphan(tmp_path, model_service, model_cache_dir):
    mem = client(tmp_path, model_service)
    mem.create_cube("team/kv")
    m = mem.write("team/kv", FACT)
    mem.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path / "home"), str(model_cache_dir), m.id],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline().split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert line[0] == "BUILT" and Path(line[1]).exists()

    mem = client(tmp_path, model_service)
    try:
        assert mem.read(m.id).kind == Kind.PLAINTEXT and [v.version for v in mem.history(m.id)] == [1]
        assert not Path(line[1]).exists()
        assert any(e.type == "migration_rolled_back" and e.memory_id == m.id for e in mem.events().events)
        (a,) = mem.migrate(m.id, "activation")  # and it can be migrated again
        assert a.version == 2
    finally:
        mem.close()


def test_a_group_cache_is_injected_for_the_memories_it_covers_and_equals_their_prefill(mem, model_service) -> None:
    from memos.models.host import memory_messages

    texts = ["Mara Quill keeps the brass key in the lighthouse.", "Tomas Reyk keeps the red notebook in the cellar."]
    members = [mem.write("team/kv", t) for t in texts]
    (group,) = mem.migrate([m.id for m in members], "activation", group="session")
    got = mem.generate(QUESTION, cubes=["team/kv"], k=2, max_new_tokens=16)
    assert got.plan.items[0].memory_id == group.id and got.plan.items[0].use == "kv"
    assert {i.memory_id for i in got.plan.items if i.use == "skip"} == {m.id for m in members}
    reference = model_service.host.generate(memory_messages(texts) + [{"role": "user", "content": QUESTION}],
                                            max_new_tokens=16)
    assert got.text == reference.text and got.cached_tokens == got.prompt_tokens - (
        reference.prompt_tokens - model_service.host.memory_tokens(texts))
