"""Purge of an activation memory, on the real model: the KV-cache file of the memory is deleted, the model host drops
its loaded copy, the vector index forgets every version, memories derived from it are marked stale, and the audit
log records it (ids only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memos.client import Memos
from memos.config import Settings
from memos.errors import NotFound
from memos.kernel.factory import open_kernel
from memos.service import KernelService
from memos.transports import InProcessTransport
from memos.types import Kind

pytestmark = pytest.mark.integration

FACT = "Ines Darrow keeps the silver compass in the greenhouse."
QUESTION = "Where does Ines Darrow keep the silver compass?"


def test_purging_an_activation_memory_deletes_its_cache_and_marks_what_derives_from_it_stale(tmp_path, model_service):
    settings = Settings(home=tmp_path / "home", sqlite_synchronous="NORMAL")
    kernel = open_kernel(settings, model=model_service)
    mem = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    try:
        mem.create_cube("team/kv")
        m = mem.write("team/kv", FACT)
        (cached,) = mem.migrate(m.id, "activation")
        path = Path(cached.payload.path)
        assert cached.kind == Kind.ACTIVATION and path.exists()
        assert mem.generate(QUESTION, memory=[m.id], max_new_tokens=4).plan.items[0].use == "kv"  # now in RAM too
        loaded = model_service.ram_usage()["payloads"]
        summary = mem.write("team/kv", "where the compass is kept", derived_from=[(m.id, cached.version)])

        assert "2 versions" in mem.purge(m.id).detail

        assert not path.exists() and not list(settings.blob_dir.rglob(f"{m.id}*"))
        assert model_service.ram_usage()["payloads"] == loaded - 1
        assert not any(entry.startswith(f"{m.id}@") for entry in kernel.index.ids())
        with pytest.raises(NotFound):
            mem.generate(QUESTION, memory=[m.id])
        assert mem.read(summary.id).stale
        records = [r for r in mem.audit("team/kv", limit=1000) if r.memory_id == m.id]
        assert (records[-1].op, records[-1].outcome, records[-1].detail) == ("purge", "ok", "purged 2 versions")
    finally:
        mem.close()
