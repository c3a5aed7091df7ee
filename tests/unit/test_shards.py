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
from memos.transports.router import ShardRouter


def _kernels(home: Path, n: int, clock, dim: int = 64) -> list[Kernel]:
    out = []
    for k in range(n):
        shard_home(home, k).mkdir(parents=True)
        out.append(Kernel(SqliteStore(shard_home(home, k) / "memos.sqlite3", synchronous="NORMAL"),
                          InMemoryVectorIndex(), HashingEmbedder(dim), clock=clock, llm=RuleBasedLanguageModel()))
    return out


@pytest.fixture
def sharded(tmp_path: Path, clock):
    """A factory: (router client for agent:alice, the shard kernels) over ``n`` shards under a fresh home."""
    made: list[ShardRouter] = []

    def make(n: int, name: str = "home", dim: int = 64) -> tuple[Memos, list[Kernel]]:
        home = tmp_path / name
        kernels = _kernels(home, n, clock, dim)
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


_WORDS = ["penguins", "antarctic", "krill", "winter", "colony", "ice", "budget", "review", "printer", "toner",
          "staging", "database", "launch", "friday", "venue", "library", "design", "room", "coffee", "team", "ocean",
          "fish", "seal", "storm"]


def _big_corpus(mem: Memos, cubes: tuple[str, ...]) -> None:
    """Three cubes of conversations, written cube by cube (session neighbours are adjacent writes of a cube):
    speakers, sessions of five turns (for the neighbour and session steps), dated turns (for the temporal step), a
    generated memory, topic words drawn so that the retrievers disagree, "team" in every text (no text is
    orthogonal to a query) and every text of its own length (no tied distances or bm25)."""
    import random

    rng = random.Random(7)
    for cube in cubes:
        mem.create_cube(cube)
    items = []
    for c, cube in enumerate(cubes):
        for j in range(20):
            n = 3 * (c * 20 + j)  # a length of its own, in words no other text has (with the turn before: too)
            words = ["team", *rng.sample(_WORDS, 3), *(f"w{rng.randrange(10**9)}" for _ in range(n))]
            if j % 7 == 0:
                words[-2:] = ["last", "friday"]
            meta = {"speaker": rng.choice(["Ana", "Bo", "Cy"]), "session": f"s{j // 5}"}
            items.append({"cube": cube, "content": " ".join(words), "metadata": meta,
                          **({"source": "generated"} if j == 11 else {})})
    assert mem.write_many(items).failed == 0


def test_a_cross_shard_search_ranks_exactly_as_one_kernel(sharded):
    """The same memories in one kernel and on two or three shards: every search over all the cubes gives the same
    memories in the same order, with the same scores and ranks (the router fuses the shards' candidates once, with
    the kernel's own function, and scores bm25 over the statistics of all of them). Exact where no two candidates
    tie on a retriever's raw score (ties are ordered by shard: docs/architecture.md); checked below."""
    cubes = ("team/a", "team/b", "team/c")
    one, _ = sharded(1, "one", 1 << 14)  # wide hashed vectors: no two texts at the same distance from a query
    two, _ = sharded(2, "two", 1 << 14)
    three, _ = sharded(3, "three", 1 << 14)
    two.transport.placement.place("team/c", 1 - two.transport.placement.shard_of("team/a"))
    for k, cube in enumerate(cubes):
        three.transport.placement.place(cube, k)
    for mem in (one, two, three):
        _big_corpus(mem, cubes)
    content = {}
    for mem in (one, two, three):
        content[mem] = {m.id: m.content for cube in cubes for m in mem.list(cube, limit=100)}
    queries = ["team antarctic penguins", "when was the team launch", "Ana team staging database"]
    single = one.transport.shards[0].service.kernel
    for query in queries:
        distances = [d for _, d in single.index.nearest(single.embedder.embed([query])[0], 1000)]
        scores = [s for _, s in single.store.lexical(query, cubes, None, 1000)]
        assert len(set(distances)) == len(distances) == 60 and len(set(scores)) == len(scores), query  # no ties
        for mode in ("hybrid", "dense", "lexical"):
            for k in (4, 10):
                want = [(content[one][h.memory.id], round(h.score, 9), h.dense_rank, h.lexical_rank)
                        for h in one.search(query, list(cubes), k=k, mode=mode)]
                assert want, (query, mode)
                for mem in (two, three):
                    got = [(content[mem][h.memory.id], round(h.score, 9), h.dense_rank, h.lexical_rank)
                           for h in mem.search(query, list(cubes), k=k, mode=mode)]
                    assert got == want, (query, mode, k, len(mem.transport.shards))


def test_calls_that_cannot_be_merged_across_shards_are_refused(sharded):
    mem, _ = sharded(2)
    mem.transport.placement.place("team/a", 0)
    mem.transport.placement.place("team/b", 1)
    mem.create_cube("team/a")
    mem.create_cube("team/b")
    with pytest.raises(InvalidSyscall, match="different shards"):
        mem.assemble_context("anything", ["team/a", "team/b"])
    newest = mem.as_principal("system").events(latest=True, limit=2, types=["cube_created"])
    assert sorted(e.cube for e in newest.events) == ["team/a", "team/b"]
    assert mem.events(cubes=["team/a"]).events  # one shard's cubes: its cursor
    records = mem.as_principal("system").audit(limit=1000)
    assert {"team/a", "team/b"} <= {r.cube for r in records}  # every shard's log, merged by time
    assert [r.at for r in records] == sorted(r.at for r in records)
    with pytest.raises(InvalidSyscall, match="one kernel's cursor"):
        mem.as_principal("system").audit(since=1)


def test_events_of_every_shard_page_by_time_with_a_cursor_of_each_shard(sharded, clock):
    from memos.cli.report import read_recorded

    mem, _ = sharded(2)
    _two_cubes_apart(mem)
    written = []
    for i in range(7):
        clock.advance(1)
        written.append(mem.write(("team/a", "team/b")[i % 2], f"note {i}").id)
    pages, cursor = [], 0
    while True:  # what `memos events --follow` and `memos report` do: pass back next_seq
        page = mem.events(cursor, limit=3, types=["written"])
        if not page.events:
            break
        pages.append([e.memory_id for e in page.events])
        cursor = page.next_seq
    assert [m for page in pages for m in page] == written  # by time across the shards, none twice, none missed
    assert all(len(p) <= 3 for p in pages) and isinstance(cursor, str) and cursor.startswith("shards:")
    clock.advance(1)
    later = mem.write("team/b", "a later note")
    assert [e.memory_id for e in mem.events(cursor, types=["written"]).events] == [later.id]
    tail = mem.events(0, limit=2, types=["written"], latest=True)
    assert [e.memory_id for e in tail.events] == [written[-1], later.id]
    assert not mem.events(tail.next_seq, types=["written"]).events  # the tail's cursor is every shard's end
    both = mem.events(0, cubes=["team/a", "team/b"], types=["written"])
    assert [e.memory_id for e in both.events] == [*written, later.id]
    with pytest.raises(InvalidSyscall, match="one kernel's cursor"):
        mem.events(5)
    with pytest.raises(InvalidSyscall, match="3 shard positions"):
        mem.events("shards:1,2,3")
    with pytest.raises(InvalidSyscall, match="cursor over kernel shards"):  # a kernel alone refuses it
        Memos(mem.transport.shards[0], "agent:alice").events("shards:0,0")
    system = mem.as_principal("system")
    every, cursor = [], 0
    while page := system.audit_page(since=cursor, limit=4):  # the audit log of every shard, paged by time
        if not page.records:
            break
        every += page.records
        cursor = page.next_since
    assert [(r.at, r.op, r.cube) for r in every] == [(r.at, r.op, r.cube) for r in system.audit(limit=1000)]
    assert [r.memory_id for r in every if r.op == "write"] == [*written, later.id]
    a_only = system.audit_page("team/a", since="shards:0,0", limit=1000)  # one cube, with a shard cursor
    assert {r.cube for r in a_only.records} == {"team/a"} and a_only.records
    recorded = read_recorded(mem, types=("written",))  # what `memos report` reads: every shard's events
    assert [r.event.memory_id for r in recorded] == [*written, later.id]


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


def test_links_across_a_moved_cube_still_resolve(sharded, clock):
    """Links from a memory that stays to one that moves, back, and inside the moved cube: each memory lists the
    same related memories, in the same order, before and after the move (a fresh router too), deletions included."""
    mem, kernels = sharded(2)
    for cube in ("team/a", "team/b"):
        mem.transport.placement.place(cube, 0)
        mem.create_cube(cube)
    a1 = mem.write("team/a", "the launch is on friday")
    b1 = mem.write("team/b", "the venue is booked for friday")
    b2 = mem.write("team/b", "catering confirmed for the launch")
    for source, target, relation in ((a1, b1, "supports"),  # stays -> moves
                                     (b2, a1, "cites"),  # moves -> stays
                                     (b1, b2, "follows")):  # inside the moved cube
        clock.advance(1)  # related lists stored links by the time they were made
        mem.link(source.id, target.id, relation)

    def related(client: Memos, **kw) -> dict[str, list[tuple[str, str, str]]]:
        return {m.id: [(r.memory.id, r.relation, r.direction) for r in client.related(m.id, **kw)] for m in (a1, b1, b2)}

    before = related(mem)
    assert before[a1.id] == [(b1.id, "supports", "out"), (b2.id, "cites", "in")]
    assert mem.transport.move_cube("team/b", 1)["moved"]
    assert _cubes_on(kernels[0]) == {"team/a"} and _cubes_on(kernels[1]) == {"team/b"}
    fresh = Memos(ShardRouter(mem.transport.shards, mem.transport.placement), "agent:alice")
    assert related(mem) == before and related(fresh) == before
    assert Memos(mem.transport.shards[0], "agent:alice").related(a1.id) == ()  # one kernel alone: the others elsewhere
    mem.delete(b1.id)
    assert [r[0] for r in related(fresh)[a1.id]] == [b2.id]
    assert [r[0] for r in related(fresh, include_inactive=True)[a1.id]] == [b1.id, b2.id]
    assert mem.transport.move_cube("team/b", 0)["moved"]  # and back: one copy of each link, nothing lost
    assert related(fresh, include_inactive=True)[a1.id] == before[a1.id]
    assert len(kernels[0].store.links_of(a1.id)) == 2 and not kernels[1].store.links_of(a1.id)
