"""memos as a LangGraph BaseStore, tested from LangGraph's documented store semantics (and its reference tests of
list_namespaces), plus what memos adds: versions, provenance, ACLs, namespaces that are cubes."""

from __future__ import annotations

import asyncio

import pytest
from langgraph.graph import START, StateGraph
from langgraph.store.base import BaseStore, GetOp, InvalidNamespaceError, PutOp, SearchOp
from typing_extensions import TypedDict

from memos.agents.namespaces import decode_segment, encode_label
from memos.agents.store import MemosStore
from memos.errors import PermissionDenied


@pytest.fixture
def store(mem) -> MemosStore:
    return MemosStore(mem)


def test_put_then_get_returns_the_item(store):
    store.put(("users", "u1"), "prefs", {"theme": "dark", "size": 3, "nested": {"a": [1, 2]}})
    item = store.get(("users", "u1"), "prefs")
    assert (item.namespace, item.key) == (("users", "u1"), "prefs")
    assert item.value == {"theme": "dark", "size": 3, "nested": {"a": [1, 2]}}
    assert item.created_at == item.updated_at


def test_get_of_a_missing_key_or_namespace_is_none(store):
    store.put(("users", "u1"), "prefs", {"theme": "dark"})
    assert store.get(("users", "u1"), "other") is None
    assert store.get(("users", "nobody"), "prefs") is None


def test_put_of_an_existing_key_writes_the_next_version_of_the_same_memory(store, mem):
    store.put(("users", "u1"), "prefs", {"theme": "dark"})
    store.put(("users", "u1"), "prefs", {"theme": "light"})
    assert store.get(("users", "u1"), "prefs").value == {"theme": "light"}
    (memory,) = mem.list("users/u1")
    assert [(v.version, v.provenance.author, v.content) for v in mem.history(memory.id)] == [
        (1, "agent:alice", '{"theme": "dark"}'),
        (2, "agent:alice", '{"theme": "light"}'),
    ]


def test_delete_then_get_is_none_and_the_history_is_kept(store, mem):
    store.put(("docs",), "d1", {"text": "hello"})
    (memory,) = mem.list("docs")
    store.delete(("docs",), "d1")
    assert store.get(("docs",), "d1") is None
    assert store.search(("docs",)) == []
    assert [v.state for v in mem.history(memory.id)] == ["active", "deleted"]
    store.delete(("docs",), "d1")  # deleting what is not there is a no-op
    store.put(("docs",), "d1", {"text": "again"})
    assert store.get(("docs",), "d1").value == {"text": "again"}


def test_search_filters_by_prefix_value_and_operators_with_limit_and_offset(store):
    for i in range(6):
        store.put(("docs", "a" if i % 2 else "b"), f"k{i}", {"n": i, "kind": "even" if i % 2 == 0 else "odd",
                                                             "meta": {"lang": "en" if i < 3 else "fr"}})
    store.put(("other",), "x", {"n": 100, "kind": "even"})
    assert {i.key for i in store.search(("docs",), filter={"kind": "even"})} == {"k0", "k2", "k4"}
    assert {i.key for i in store.search(("docs",), filter={"n": {"$gte": 2, "$lt": 5}})} == {"k2", "k3", "k4"}
    assert {i.key for i in store.search(("docs",), filter={"n": {"$ne": 1}, "meta": {"lang": "fr"}})} == {"k3", "k4", "k5"}
    assert {i.key for i in store.search(("docs", "a"))} == {"k1", "k3", "k5"}
    everything = store.search((), limit=100)
    assert len(everything) == 7 and all(i.score is None for i in everything)
    pages = [store.search(("docs",), limit=2, offset=o) for o in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 2, 0]
    assert len({i.key for p in pages for i in p}) == 6
    with pytest.raises(ValueError, match="unsupported filter operator"):
        store.search(("docs",), filter={"n": {"$regex": "x"}})


def test_search_with_a_query_ranks_by_hybrid_search(store):
    store.put(("notes",), "cats", {"text": "cats purr and sleep all day"})
    store.put(("notes",), "rust", {"text": "the borrow checker rejects dangling references"})
    store.put(("notes",), "tea", {"text": "green tea is steeped at eighty degrees"})
    hits = store.search(("notes",), query="borrow checker references", limit=2)
    assert hits[0].key == "rust" and hits[0].score is not None
    assert len(hits) == 2
    assert store.search(("notes",), query="tea", filter={"text": "cats purr and sleep all day"})[0].key == "cats"


def test_list_namespaces_follows_langgraph_reference_semantics(store):
    namespaces = [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"), ("a", "c", "f"),
                  ("b", "a", "f"), ("users", "123"), ("users", "456", "settings"), ("admin", "users", "789")]
    for i, ns in enumerate(namespaces):
        store.put(ns, f"id_{i}", {"data": f"value_{i:02d}"})
    assert store.list_namespaces(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"),
                                                        ("a", "b", "f")]
    assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("a", "b"), limit=2) == [("a", "b", "c"), ("a", "b", "d", "e")]
    assert store.list_namespaces(prefix=("a", "b"), offset=2) == [("a", "b", "d", "i"), ("a", "b", "f")]
    assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert store.list_namespaces(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
    assert store.list_namespaces(prefix=("*", "users"), suffix=("*", "settings")) == []
    assert store.list_namespaces(prefix=("nonexistent",)) == []
    assert store.list_namespaces(prefix=("users", "123")) == [("users", "123")]
    assert store.list_namespaces(max_depth=1) == [("a",), ("admin",), ("b",), ("users",)]


def test_a_namespace_without_active_items_is_not_listed(store):
    assert store.list_namespaces() == []
    store.put(("tmp",), "k", {"v": 1})
    assert store.list_namespaces() == [("tmp",)]
    store.delete(("tmp",), "k")
    assert store.list_namespaces() == []


def test_any_label_langgraph_accepts_round_trips_through_cube_names(store, mem):
    odd = ("Users", "Alice Smith", "x--looks-escaped", "ünï", "langgraph")
    store.put(odd, "k", {"v": 1})
    assert store.get(odd, "k").value == {"v": 1}
    assert store.list_namespaces() == [odd]
    store.batch([PutOp(("langgraph", "foo"), "bar", {"v": 2})])  # past the public API, as LangGraph's own tests do
    assert store.get(("langgraph", "foo"), "bar").value == {"v": 2}
    for label in ("Users", "x--abc", "a b", "ünï", "ok-label_1"):
        assert decode_segment(encode_label(label)) == label
    assert decode_segment("x--notbase32!") is None


def test_namespaces_no_cube_name_can_hold_are_refused_on_put_and_empty_on_read(store):
    with pytest.raises(InvalidNamespaceError):
        store.put(tuple("abcdefghi"), "k", {"v": 1})  # 9 labels: cube names hold 8 segments
    with pytest.raises(InvalidNamespaceError):
        store.put(("L" * 39,), "k", {"v": 1})  # an escaped label holds at most 38 bytes
    with pytest.raises(InvalidNamespaceError):
        store.put(("the", "thing.about"), "k", {"v": 1})
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp((), "k", {"v": 1})])
    assert store.get(tuple("abcdefghi"), "k") is None


def test_a_root_keeps_the_namespaces_of_a_store_under_one_cube_prefix(mem):
    store = MemosStore(mem, root="apps/chat")
    store.put(("memories", "u1"), "m1", {"text": "likes tea"})
    assert [c.name for c in mem.cubes()] == ["apps/chat/memories/u1"]
    assert store.list_namespaces() == [("memories", "u1")]
    mem.create_cube("elsewhere")
    mem.write("elsewhere", "not under the root")
    assert store.list_namespaces() == [("memories", "u1")]
    assert MemosStore(mem).list_namespaces() == [("apps", "chat", "memories", "u1"), ("elsewhere",)]


def test_memories_written_by_agents_are_items_keyed_by_memory_id(store, mem):
    mem.create_cube("team/research")
    m = mem.write("team/research", "Sodium-ion cells cost less per kWh", tags=["finding"])
    (item,) = store.search(("team", "research"))
    assert (item.key, item.value) == (m.id, {"content": m.content, "author": "agent:alice", "tags": ["finding"]})
    assert store.get(("team", "research"), m.id).value["content"] == m.content
    store.put(("team", "research"), m.id, {"content": "corrected", "source": "store"})
    assert store.get(("team", "research"), m.id).value == {"content": "corrected", "source": "store"}
    assert [v.version for v in mem.history(m.id)] == [1, 2]


def test_acls_apply_to_the_stores_principal(store, mem):
    store.put(("private", "alice"), "secret", {"v": 1})
    bob = MemosStore(mem.as_principal("agent:bob"))
    with pytest.raises(PermissionDenied, match="'read' right"):
        bob.get(("private", "alice"), "secret")
    with pytest.raises(PermissionDenied, match="'write' right") as refused:  # the right a put needs, not the lookup's
        bob.put(("private", "alice"), "secret", {"v": 2})
    assert refused.value.details == {"cube": "private/alice", "right": "write"}
    assert bob.list_namespaces() == [] and bob.search(()) == []
    denied = [r for r in mem.audit("private/alice") if r.outcome == "denied"]
    assert {r.principal for r in denied} == {"agent:bob"}
    mem.grant("private/alice", "agent:bob", "read")
    assert bob.get(("private", "alice"), "secret").value == {"v": 1}


def test_changes_made_through_another_store_are_seen(store, mem):
    other = MemosStore(mem)
    store.put(("shared",), "k", {"v": 1})
    assert store.get(("shared",), "k").value == {"v": 1}
    other.delete(("shared",), "k")
    assert store.get(("shared",), "k") is None
    other.put(("shared",), "k", {"v": 2})
    assert store.get(("shared",), "k").value == {"v": 2}


def test_batch_runs_ops_in_order_and_returns_one_result_each(store):
    results = store.batch([
        PutOp(("b",), "k", {"v": 1}), GetOp(("b",), "k"), PutOp(("b",), "k", None), GetOp(("b",), "k"),
        SearchOp(("b",)),
    ])
    assert results[0] is None and results[1].value == {"v": 1} and results[2:] == [None, None, []]


def test_ttls_and_non_json_values_are_refused(store):
    with pytest.raises(NotImplementedError):
        store.put(("t",), "k", {"v": 1}, ttl=5)
    with pytest.raises(ValueError, match="must be JSON"):
        store.put(("t",), "k", {"v": object()})


def test_the_async_api_has_the_same_semantics(store):
    async def scenario():
        await store.aput(("a",), "k", {"v": 1})
        await store.aput(("a",), "k", {"v": 2})
        got = await store.aget(("a",), "k")
        found = await store.asearch(("a",), filter={"v": 2})
        spaces = await store.alist_namespaces()
        await store.adelete(("a",), "k")
        return got.value, [i.key for i in found], spaces, await store.aget(("a",), "k")

    assert asyncio.run(scenario()) == ({"v": 2}, ["k"], [("a",)], None)


class Counter(TypedDict):
    user: str
    visits: int


def test_works_as_the_store_of_a_compiled_graph_and_names_the_thread(store, mem):
    def visit(state: Counter, store: BaseStore) -> dict:
        namespace = ("visits", state["user"])
        seen = store.get(namespace, "count")
        visits = (seen.value["n"] if seen else 0) + 1
        store.put(namespace, "count", {"n": visits})
        return {"visits": visits}

    builder = StateGraph(Counter)
    builder.add_node("visit", visit)
    builder.add_edge(START, "visit")
    graph = builder.compile(store=store)
    assert graph.invoke({"user": "u1"}, {"configurable": {"thread_id": "t-1"}})["visits"] == 1
    assert graph.invoke({"user": "u1"}, {"configurable": {"thread_id": "t-2"}})["visits"] == 2
    (memory,) = mem.list("visits/u1")
    assert [(v.version, v.provenance.source_refs, v.metadata["thread"]) for v in mem.history(memory.id)] == [
        (1, ("thread/t-1",), "t-1"), (2, ("thread/t-2",), "t-2"),
    ]
