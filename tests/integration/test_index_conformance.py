"""One set of tests over every VectorIndex: the in-memory index (unit tests, small deployments) and Chroma (on disk)
must answer the same (memos.storage.vector: the protocol and ``matches``, the filter semantics)."""

from __future__ import annotations

import pytest

from memos.models.hashing import HashingEmbedder
from memos.storage.sqlite import FOREVER
from memos.storage.vector import IndexEntry, IndexQuery, InMemoryVectorIndex

pytestmark = pytest.mark.integration

EMBED = HashingEmbedder(dim=64)
TEXTS = {
    "m_aaaaaaaaaaaaaaaa@1": ("the ferry leaves at dawn", {"cube": "team/x", "state": "active", "trust": "trusted",
                                                         "kind": "plaintext", "valid_from": 1.0, "valid_to": FOREVER}),
    "m_bbbbbbbbbbbbbbbb@1": ("the ferry is late today", {"cube": "team/x", "state": "active", "trust": "untrusted",
                                                        "kind": "activation", "valid_from": 1.0, "valid_to": FOREVER}),
    "m_cccccccccccccccc@1": ("the ferry leaves at noon", {"cube": "team/x", "state": "active", "trust": "trusted",
                                                         "kind": "plaintext", "valid_from": 1.0, "valid_to": 5.0}),
    "m_cccccccccccccccc@2": ("the ferry leaves at one", {"cube": "team/x", "state": "active", "trust": "trusted",
                                                        "kind": "plaintext", "valid_from": 5.0, "valid_to": FOREVER}),
    "m_dddddddddddddddd@1": ("the ferry leaves at dawn", {"cube": "team/y", "state": "active", "trust": "trusted",
                                                         "kind": "plaintext", "valid_from": 1.0, "valid_to": FOREVER}),
    "m_eeeeeeeeeeeeeeee@1": ("the ferry leaves at dawn", {"cube": "team/x", "state": "archived", "trust": "trusted",
                                                         "kind": "plaintext", "valid_from": 1.0, "valid_to": FOREVER}),
}


@pytest.fixture(params=["memory", "chroma"])
def index(request, tmp_path):
    if request.param == "memory":
        idx = InMemoryVectorIndex()
    else:
        from memos.storage.chroma import ChromaIndex

        idx = ChromaIndex(tmp_path / "chroma")
    idx.upsert([IndexEntry(i, EMBED.embed([text])[0], meta) for i, (text, meta) in TEXTS.items()])
    yield idx
    idx.close()


def ask(index, text: str, **kw) -> list[str]:
    return [i for i, _ in index.query(IndexQuery(embedding=EMBED.embed([text])[0], limit=10, **kw))]


def test_current_active_entries_of_the_cubes_only_best_first(index):
    found = ask(index, "ferry leaves dawn", cubes=("team/x",))
    assert found[0] == "m_aaaaaaaaaaaaaaaa@1"
    assert set(found) == {"m_aaaaaaaaaaaaaaaa@1", "m_bbbbbbbbbbbbbbbb@1", "m_cccccccccccccccc@2"}


def test_as_of_a_time_gives_the_versions_valid_then(index):
    assert "m_cccccccccccccccc@1" in ask(index, "ferry noon", cubes=("team/x",), at=3.0)
    assert "m_cccccccccccccccc@2" not in ask(index, "ferry noon", cubes=("team/x",), at=3.0)


def test_equals_and_one_of_filter(index):
    assert set(ask(index, "ferry", cubes=("team/x",), equals={"trust": "untrusted"})) == {"m_bbbbbbbbbbbbbbbb@1"}
    assert set(ask(index, "ferry", cubes=("team/x", "team/y"), one_of={"kind": ("plaintext",)})) == {
        "m_aaaaaaaaaaaaaaaa@1", "m_cccccccccccccccc@2", "m_dddddddddddddddd@1"}
    assert set(ask(index, "ferry", cubes=("team/x",), states=("archived",))) == {"m_eeeeeeeeeeeeeeee@1"}


def test_distances_are_cosine_and_nearest_ignores_metadata(index):
    [(best, distance), *_] = index.query(IndexQuery(embedding=EMBED.embed(["the ferry leaves at dawn"])[0],
                                                    cubes=("team/y",), limit=1))
    assert best == "m_dddddddddddddddd@1" and distance == pytest.approx(0.0, abs=1e-5)
    near = [i for i, _ in index.nearest(EMBED.embed(["the ferry leaves at dawn"])[0], 3)]
    assert set(near) == {"m_aaaaaaaaaaaaaaaa@1", "m_dddddddddddddddd@1", "m_eeeeeeeeeeeeeeee@1"}


def test_metadata_updates_deletes_and_listing(index):
    assert index.ids() == set(TEXTS)
    index.set_metadata(["m_aaaaaaaaaaaaaaaa@1", "m_zzzzzzzzzzzzzzzz@1"],
                       [{**TEXTS["m_aaaaaaaaaaaaaaaa@1"][1], "state": "deleted"}, {"cube": "team/x"}])
    assert index.get_metadata(["m_aaaaaaaaaaaaaaaa@1"])["m_aaaaaaaaaaaaaaaa@1"]["state"] == "deleted"
    assert "m_zzzzzzzzzzzzzzzz@1" not in index.ids()  # set_metadata never creates an entry
    assert "m_aaaaaaaaaaaaaaaa@1" not in ask(index, "ferry dawn", cubes=("team/x",))
    index.delete(["m_bbbbbbbbbbbbbbbb@1"])
    assert index.ids() == set(TEXTS) - {"m_bbbbbbbbbbbbbbbb@1"}
    assert index.get_metadata(["m_bbbbbbbbbbbbbbbb@1"]) == {}
