"""Kernel shards without Ray: the placement table, the router's routes and the fusion of a cross-shard search, over
in-process kernels (each shard a kernel on its own SQLite file, as a shard actor owns its own data dir)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import HashingEmbedder

from memos.client import Memos
from memos.errors import InvalidState, InvalidSyscall, NotFound
from memos.kernel import Kernel
from memos.models.llm_rules import RuleBasedLanguageModel
from memos.service import KernelService
from memos.storage.placement import Placement, default_shard, shard_home
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.transports import InProcessTransport
from memos.transports.router import ShardRouter, fuse_hits


def _kernels(home: Path, n: int, clock) -> list[Kernel]:
    out = []
    for k in range(n):
        shard_home(home, k).mkdir(parents=True)
        out.append(Kernel(SqliteStore(shard_home(home, k) / "memos.sqlite3", synchronous="NORMAL"),
                          InMemoryVectorIndex(), HashingEmbedder(), clock=clock, llm=RuleBasedLanguageModel()))
    return out


@pytest.fixture
def sharded(tmp_path: Path, clock):
    """A factory: (router client for agent:alice, the shard kernels) over ``n`` shards under a fresh home."""
    made: list[ShardRouter] = []

    def make(n: int, name: str = "home") -> tuple[Memos, list[Kernel]]:
        home = tmp_path / name
        kernels = _kernels(home, n, clock)
        router = ShardRouter([InProcessTransport(KernelService(k)) for k in kernels], Placement.create(home, n))
        made.append(router)
        return Memos(router, "agent:alice"), kernels

    yield make
    for router in made:
        router.close()


def _cubes_on(kernel: Kernel) -> set[str]:
    return {c.name for c in kernel.store.list_cubes()}


def test_default_placement_is_a_stable_hash_and_creation_records_it(tmp_path):
    table = Placement.create(tmp_path, 4)
    assert default_shard("team/a", 4) == default_shard("team/a", 4)
    assert {default_shard(f"team/{i}", 4) for i in range(40)} == {0, 1, 2, 3}
    assert table.shard_of("team/a") == default_shard("team/a", 4)
    assert table.place("team/a") == default_shard("team/a", 4)
    assert table.place("team/b", 3) == 3
    grown = Placement.create(tmp_path, 8)  # growing keeps every recorded cube where it is
    assert grown.shard_of("team/b") == 3 and grown.shard_of("team/a") == default_shard("team/a", 4)
    with pytest.raises(InvalidSyscall, match="cannot shrink"):
        Placement.create(tmp_path, 2)
    with pytest.raises(InvalidSyscall, match="no shard 9"):
        grown.place("team/c", 9)


def test_a_placement_change_is_seen_by_every_reader(tmp_path):
    a, b = Placement.create(tmp_path, 2), Placement(tmp_path)
    a.place("team/x", 1)
    assert b.shard_of("team/x") == 1
    a.place("team/x", 0)
    assert b.shard_of("team/x") == 0


def test_cubes_live_on_their_shard_and_id_calls_find_them(sharded):
    mem, kernels = sharded(2)
    mem.transport.placement.place("team/a", 0)
    mem.transport.placement.place("team/b", 1)
    mem.create_cube("team/a")
    mem.create_cube("team/b")
    assert _cubes_on(kernels[0]) == {"team/a"} and _cubes_on(kernels[1]) == {"team/b"}
    b = mem.write("team/b", "the launch moved to Monday")
    assert mem.update(b.id, content="the launch moved to Tuesday", expected_version=1).version == 2
    # A router that never saw the memory finds its shard by asking each (not_found changes nothing).
    fresh = Memos(ShardRouter(mem.transport.shards, mem.transport.placement), "agent:alice")
    assert [v.content for v in fresh.history(b.id)] == ["the launch moved to Monday", "the launch moved to Tuesday"]
    with pytest.raises(NotFound):
        fresh.read("m_00000000000000000000")
    assert [c.name for c in mem.cubes()] == ["team/a", "team/b"]
    stats = mem.stats()
    assert stats.cubes == 2 and stats.memories["plaintext"]["active"] == 1


def test_write_many_splits_by_shard_and_keeps_the_items_order(sharded):
    mem, _ = sharded(2)
    mem.transport.placement.place("team/a", 0)
    mem.transport.placement.place("team/b", 1)
    mem.create_cube("team/a")
    mem.create_cube("team/b")
    items = [{"cube": "team/b", "content": "b one"}, {"cube": "team/a", "content": "a one"},
             {"cube": "team/nope", "content": "no such cube"}, {"cube": "team/a", "content": "a two"}]
    result = mem.write_many(items)
    assert (result.written, result.failed) == (3, 1)
    assert result.results[2].error["code"] == "not_found"
    assert [mem.read(r.id).content for r in result.results if r.ok] == ["b one", "a one", "a two"]
    assert [m.content for m in mem.list("team/b")] == ["b one"]


def _corpus(mem: Memos) -> None:
    for cube in ("team/a", "team/b"):
        mem.create_cube(cube)
    mem.write_many([
        {"cube": "team/a", "content": "penguins huddle together against the antarctic wind"},
        {"cube": "team/a", "content": "the quarterly budget review is on thursday"},
        {"cube": "team/a", "content": "emperor penguins breed in the antarctic winter"},
        {"cube": "team/a", "content": "the printer on floor two is out of toner"},
        {"cube": "team/b", "content": "penguins in the antarctic eat krill and fish"},
        {"cube": "team/b", "content": "our staging database is restored every night"},
        {"cube": "team/b", "content": "a colony of antarctic penguins can hold thousands"},
        {"cube": "team/b", "content": "the design review moved to the large room"},
    ])


def test_a_cross_shard_search_finds_what_one_kernel_finds(sharded):
    one, _ = sharded(1, "one")
    two, _ = sharded(2, "two")
    two.transport.placement.place("team/a", 0)
    two.transport.placement.place("team/b", 1)
    _corpus(one)
    _corpus(two)
    for mode in ("hybrid", "dense", "lexical"):
        single = one.search("antarctic penguins", ["team/a", "team/b"], k=4, mode=mode)
        split = two.search("antarctic penguins", ["team/a", "team/b"], k=4, mode=mode)
        assert {h.memory.content for h in split} == {h.memory.content for h in single}, mode
        assert all("penguins" in h.memory.content for h in split)
        # Within a shard the router keeps the shard's own order.
        for cube in ("team/a", "team/b"):
            mine = [h.memory.content for h in split if h.memory.cube == cube]
            assert mine == [h.memory.content for h in two.search("antarctic penguins", [cube], k=4, mode=mode)
                            ][:len(mine)]


def test_fusion_orders_by_score_and_keeps_shard_order_on_ties():
    a = [{"score": 0.5, "memory": {"id": "a1"}}, {"score": 0.2, "memory": {"id": "a2"}}]
    b = [{"score": 0.5, "memory": {"id": "b1"}}, {"score": 0.3, "memory": {"id": "b2"}}]
    assert [h["memory"]["id"] for h in fuse_hits([a, b], 3)] == ["a1", "b1", "b2"]


def test_calls_that_cannot_be_merged_across_shards_are_refused(sharded):
    mem, _ = sharded(2)
    mem.transport.placement.place("team/a", 0)
    mem.transport.placement.place("team/b", 1)
    mem.create_cube("team/a")
    mem.create_cube("team/b")
    with pytest.raises(InvalidSyscall, match="different shards"):
        mem.assemble_context("anything", ["team/a", "team/b"])
    with pytest.raises(InvalidSyscall, match="single cursor"):
        mem.events()
    newest = mem.as_principal("system").events(latest=True, limit=2, types=["cube_created"])
    assert sorted(e.cube for e in newest.events) == ["team/a", "team/b"] and newest.next_seq == 0
    assert mem.events(cubes=["team/a"]).events  # one shard's cubes: its cursor
    records = mem.as_principal("system").audit(limit=1000)
    assert {"team/a", "team/b"} <= {r.cube for r in records}  # every shard's log, merged by time
    assert [r.at for r in records] == sorted(r.at for r in records)
    with pytest.raises(InvalidSyscall, match="per shard"):
        mem.as_principal("system").audit(since=1)


def _two_cubes_apart(mem: Memos) -> None:
    mem.transport.placement.place("team/a", 0)
    mem.transport.placement.place("team/b", 1)
    mem.create_cube("team/a")
    mem.create_cube("team/b")


def test_a_moved_cube_keeps_its_memories_versions_links_and_search(sharded):
    mem, kernels = sharded(2)
    _two_cubes_apart(mem)
    m = mem.write("team/a", "the launch is on friday", tags=["plan"])
    mem.update(m.id, content="the launch moved to monday", expected_version=1)
    other = mem.write("team/a", "the venue is the old library")
    mem.link(m.id, other.id, "supports")
    mem.grant("team/a", "agent:bob", "read")
    gone = mem.write("team/a", "a note to delete")
    mem.delete(gone.id)
    report = mem.transport.move_cube("team/a", 1)
    assert report["moved"] and (report["from"], report["to"], report["memories"]) == (0, 1, 3)
    assert _cubes_on(kernels[0]) == set() and _cubes_on(kernels[1]) == {"team/a", "team/b"}
    assert mem.transport.placement.shard_of("team/a") == 1 and not mem.transport.placement.moves
    fresh = Memos(ShardRouter(mem.transport.shards, mem.transport.placement), "agent:bob")
    assert [v.content for v in fresh.history(m.id)] == ["the launch is on friday", "the launch moved to monday"]
    assert [h.memory.id for h in fresh.search("launch monday", "team/a", k=1)] == [m.id]
    assert [h.memory.id for h in fresh.search("launch monday", "team/a", k=1, mode="lexical")] == [m.id]
    assert [r.memory.id for r in fresh.related(m.id)][:1] == [other.id]
    assert fresh.read(gone.id).state == "deleted"
    assert mem.update(m.id, content="the launch moved to tuesday", expected_version=2).version == 3


class _WritesDuringImport:
    """A shard transport that writes to the cube on the source shard while the target imports it."""

    def __init__(self, inner, source_client: Memos) -> None:
        self.inner, self.source_client = inner, source_client

    def shard_admin(self, method, *args):
        if method == "import_cube":
            self.source_client.write("team/a", "written during the move")
        return self.inner.shard_admin(method, *args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_write_during_a_move_undoes_the_move_and_is_kept(sharded):
    mem, kernels = sharded(2)
    _two_cubes_apart(mem)
    mem.write("team/a", "before the move")
    router = mem.transport
    source_only = Memos(router.shards[0], "agent:alice")
    router.shards[1] = _WritesDuringImport(router.shards[1], source_only)
    with pytest.raises(InvalidState, match="written to during the move"):
        router.move_cube("team/a", 1)
    assert _cubes_on(kernels[1]) == {"team/b"} and router.placement.shard_of("team/a") == 0
    assert sorted(m.content for m in mem.list("team/a")) == ["before the move", "written during the move"]


def test_an_interrupted_move_is_undone_or_finished(sharded):
    mem, kernels = sharded(2)
    _two_cubes_apart(mem)
    mem.write("team/a", "a fact")
    router = mem.transport
    router.placement.begin_move("team/a", 1)  # crashed after copying, before dropping the source
    router.shards[1].shard_admin("import_cube", router.shards[0].shard_admin("export_cube", "team/a"))
    assert [r["finished"] for r in router.recover_moves()] == [False]
    assert _cubes_on(kernels[1]) == {"team/b"} and router.placement.shard_of("team/a") == 0
    router.placement.begin_move("team/a", 1)  # crashed after dropping the source, before the switch
    exported = router.shards[0].shard_admin("export_cube", "team/a")
    router.shards[1].shard_admin("import_cube", exported)
    router.shards[0].shard_admin("drop_moved_cube", "team/a", exported["fingerprint"])
    assert [r["finished"] for r in router.recover_moves()] == [True]
    assert router.placement.shard_of("team/a") == 1
    assert [m.content for m in mem.list("team/a")] == ["a fact"]


def test_a_sharded_home_opens_as_its_shards_never_as_one_kernel(tmp_path):
    from memos.config import Settings
    from memos.errors import DataDirInUse
    from memos.service import open_service

    Placement.create(tmp_path, 2)
    mem = Memos.embedded(tmp_path, "agent:alice", model=None, embedder="hashing")
    try:
        assert isinstance(mem.transport, ShardRouter) and len(mem.transport.shards) == 2
        mem.create_cube("team/a")
        assert (shard_home(tmp_path, mem.transport.placement.shard_of("team/a")) / "memos.sqlite3").exists()
    finally:
        mem.close()
    with pytest.raises(DataDirInUse, match="sharded data dir"):
        open_service(Settings(home=tmp_path, model=None, embedder="hashing"), model=None, owner="test")
    assert not (tmp_path / "memos.sqlite3").exists()
