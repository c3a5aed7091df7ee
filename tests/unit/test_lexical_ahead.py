"""A hybrid search's lexical leg runs on a worker thread while the query is embedded (``Kernel._lexical_ahead``):
the hits are those of the sequential path, the leg runs once, and a write between the leg and the search's
transaction makes the search run it again."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from memos import syscalls as sc
from memos.kernel import kernel as kernel_module
from memos.storage.sqlite import SqliteStore

WORDS = ["otter", "river", "stone", "kelp", "tide", "shell", "reef", "heron", "marsh", "delta"]


@pytest.fixture
def cube(mem):
    mem.create_cube("team/sea")
    for i in range(40):
        words = [WORDS[(i * 3 + j) % len(WORDS)] for j in range(1 + i % 4)]
        mem.write("team/sea", f"note {i}: the {' and the '.join(words)}", metadata={"session": i // 8})
    return "team/sea"


def _hits(mem, cube, query, **kw):
    return [(h.memory.id, round(h.score, 12), h.dense_rank, h.lexical_rank) for h in mem.search(query, cube, **kw)]


def _lexical_calls(monkeypatch) -> list[str]:
    """Names of the threads that ran ``SqliteStore.lexical``, in order."""
    calls: list[str] = []
    real = SqliteStore.lexical

    def spy(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SqliteStore, "lexical", spy)
    return calls


def test_ahead_gives_the_hits_of_the_sequential_path(mem, kernel, cube, monkeypatch):
    queries = ["otter and river", "the kelp reef", "heron marsh delta stone", "note 7", "nothing matches here"]
    ahead = {q: _hits(mem, cube, q, k=8) for q in queries}
    ahead_as_of = _hits(mem, cube, "tide shell", k=5, as_of=datetime.fromtimestamp(kernel.clock.now(), tz=UTC))
    monkeypatch.setattr(kernel, "lexical_ahead", False)  # the sequential path: both legs in the handler
    assert {q: _hits(mem, cube, q, k=8) for q in queries} == ahead
    assert _hits(mem, cube, "tide shell", k=5, as_of=datetime.fromtimestamp(kernel.clock.now(), tz=UTC)) == ahead_as_of
    assert any(lexical_rank for hits in ahead.values() for *_, lexical_rank in hits)


def test_the_leg_runs_once_on_a_worker_thread_and_only_for_hybrid_search(mem, cube, monkeypatch):
    calls = _lexical_calls(monkeypatch)
    mem.search("otter river", cube)
    assert len(calls) == 1 and calls[0].startswith("memos-lexical")
    calls.clear()
    mem.search("otter river", cube, mode="lexical")  # no embedding to overlap: runs in the handler
    mem.search("otter river", cube, mode="dense")
    assert len(calls) == 1 and not calls[0].startswith("memos-lexical")
    calls.clear()
    mem.assemble_context("otter river", [cube], k=4)
    assert len(calls) == 1 and calls[0].startswith("memos-lexical")


def test_a_write_between_the_leg_and_the_search_runs_it_again(mem, cube, monkeypatch):
    calls = _lexical_calls(monkeypatch)
    real = kernel_module._outcome
    written = []

    def write_in_between(ahead):
        leg = real(ahead)  # the leg has run; another client writes before the search takes the kernel
        if not written:
            written.append(mem.write(cube, "a walrus on the ice floe"))
        return leg

    monkeypatch.setattr(kernel_module, "_outcome", write_in_between)
    hits = mem.search("walrus floe", cube)
    assert hits[0].memory.id == written[0].id and hits[0].lexical_rank == 1
    assert len(calls) == 2 and calls[0].startswith("memos-lexical") and not calls[1].startswith("memos-lexical")


def test_no_leg_ahead_for_a_call_made_inside_a_transaction(kernel, cube):
    call = sc.Search(query="otter", cubes=(cube,))
    assert kernel._lexical_ahead(call) is not None
    with kernel.store.transaction():
        assert kernel._lexical_ahead(call) is None  # the worker would wait for this thread's transaction


def test_a_failed_leg_is_run_again_by_the_handler(mem, kernel, cube, monkeypatch):
    monkeypatch.setattr(kernel_module, "run_lexical_leg", lambda store, key: 1 / 0)
    hits = mem.search("otter river", cube)
    assert hits and any(h.lexical_rank for h in hits)
