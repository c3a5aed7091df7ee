"""Hybrid search: dense + lexical fused by reciprocal rank; filters; several cubes."""

from __future__ import annotations

import pytest

from memos.kernel.retrieval import reciprocal_rank_fusion
from memos.storage.vector import entry_id


def test_rrf_prefers_documents_found_by_both():
    fused = reciprocal_rank_fusion([1, 2, 3], [3, 4])
    assert fused[0].key == 3
    assert (fused[0].dense_rank, fused[0].lexical_rank) == (3, 1)
    assert {f.key for f in fused} == {1, 2, 3, 4}


def test_search_spans_cubes_and_filters(mem):
    mem.create_cube("team/a")
    mem.create_cube("team/b")
    a = mem.write("team/a", "penguins live in antarctica", tags=["bird"], metadata={"lang": "en"})
    b = mem.write("team/b", "penguins cannot fly", tags=["bird", "fact"])
    mem.write("team/b", "kangaroos live in australia")
    hits = mem.search("penguins", ["team/a", "team/b"], k=5)
    assert {h.memory.id for h in hits} >= {a.id, b.id}
    assert [h.memory.id for h in mem.search("penguins", ["team/a", "team/b"], tags=["fact"])] == [b.id]
    assert [h.memory.id for h in mem.search("penguins", ["team/a", "team/b"], metadata={"lang": "en"})] == [a.id]
    assert mem.search("penguins", "team/a", authors=["agent:nobody"]) == ()


def test_lexical_and_dense_modes_report_their_ranks(mem):
    mem.create_cube("team/a")
    m = mem.write("team/a", "the quarterly revenue grew by 12 percent")
    lex = mem.search("revenue", "team/a", mode="lexical")
    assert lex[0].memory.id == m.id and lex[0].lexical_rank == 1 and lex[0].dense_rank is None
    dense = mem.search("revenue", "team/a", mode="dense")
    assert dense[0].dense_rank == 1 and dense[0].lexical_rank is None


def test_search_hits_count_as_reads(mem):
    mem.create_cube("team/a")
    m = mem.write("team/a", "owls hunt at night")
    mem.search("owls", "team/a")
    mem.search("owls", "team/a")
    assert mem.read(m.id).reads == 3


def test_fts_query_syntax_cannot_leak(mem):
    mem.create_cube("team/a")
    mem.write("team/a", "plain text")
    for q in ['"unbalanced', "NEAR(a b)", "a AND OR NOT", "col:val", "*", "()"]:
        mem.search(q, "team/a", mode="lexical")


def test_hybrid_rerank_pure_parts():
    from memos.kernel.retrieval import asks_when, is_dated, named_in

    assert asks_when("When did Mel adopt Max?") and asks_when("how long has Ana painted?")
    assert not asks_when("Where does Mel live?")
    assert is_dated("[8 May 2023] Mel went there yesterday") and is_dated("in 2019 we met")
    assert not is_dated("[8 May 2023] Mel likes tea")
    assert named_in("What did Mel paint?", {"Mel", "Ana"}) == "Mel"
    assert named_in("Did Mel meet Ana?", {"Mel", "Ana"}) is None and named_in("who?", {"Mel"}) is None


def test_hybrid_search_prefers_the_named_speaker_and_knows_session_neighbours(mem, kernel):
    mem.create_cube("team/chat")
    meta = {"session": 1}
    ana = mem.write("team/chat", "I painted a lake at sunrise", metadata={**meta, "speaker": "Ana"})
    mel = mem.write("team/chat", "I painted a lake at sunrise", metadata={**meta, "speaker": "Mel"})
    after = mem.write("team/chat", "it hangs in the hallway now", metadata={**meta, "speaker": "Mel"})
    other = mem.write("team/chat", "unrelated words entirely", metadata={"session": 2, "speaker": "Mel"})
    hits = mem.search("what did Mel paint", "team/chat", k=3)
    assert hits[0].memory.id == mel.id  # same words as Ana's, but Mel is named
    near = kernel.store.insertion_neighbours([mel.id, after.id, other.id])
    assert {n.memory_id for n in near[mel.id]} == {ana.id, after.id}
    assert [n.memory_id for n in near[after.id]] == [mel.id] and other.id not in near  # session 2 is alone


def test_a_session_turn_is_embedded_after_the_turn_before_it(mem, kernel):
    """The vector index embeds a memory of a session with the content of the one written just before it in that
    session (memos.kernel.retrieval.embedding_text); a memory without a session, or first in its session, alone."""
    mem.create_cube("team/chat")
    ask = mem.write("team/chat", "Ana: where did you go last weekend?", metadata={"session": 1})
    reply = mem.write("team/chat", "Mel: to the lake, with the kids", metadata={"session": 1})
    later = mem.write("team/chat", "Mel: I start a pottery class", metadata={"session": 2})
    loose = mem.write("team/chat", "a note of no session")
    texts = [(ask, ask.content), (reply, f"{ask.content}\n{reply.content}"), (later, later.content),
             (loose, loose.content)]
    for m, text in texts:
        [(found, distance)] = kernel.index.nearest(kernel.embedder.embed([text])[0], 1)
        assert found == entry_id(m.id, m.version) and distance < 1e-5
    assert mem.search("where did Mel go last weekend", "team/chat", k=1, mode="lexical")[0].memory.id == ask.id


def test_session_factors_favour_the_strongest_session():
    from memos.kernel.retrieval import session_factors

    hits = [("s1", 1.0), ("s1", 0.5), ("s2", 0.75), (None, 2.0), ("s1", 0.1), ("s1", 0.01)]
    # s1's strength is its three best (1.6), s2's 0.75; a hit of no session keeps its score
    assert session_factors(hits, boost=0.5) == pytest.approx([1.5, 1.5, 1 + 0.5 * 0.75 / 1.6, 1.0, 1.5, 1.5])
    assert session_factors([(None, 1.0)]) == [1.0] and session_factors([]) == []


def test_a_when_question_prefers_a_dated_memory(mem):
    mem.create_cube("team/chat")
    plain = mem.write("team/chat", "Mel adopted a dog named Max")
    dated = mem.write("team/chat", "Mel adopted a dog named Max last week")
    assert mem.search("when did Mel adopt Max", "team/chat", k=2)[0].memory.id == dated.id
    assert mem.search("did Mel adopt Max", "team/chat", k=2)[0].memory.id == plain.id


def test_dense_candidates_from_the_unfiltered_probe_equal_the_filtered_query(kernel, mem, clock):
    """dense_candidates probes the index unfiltered and checks cube, state and validity in SQLite; whether it answers
    from the probe (a big cube) or falls back to the filtered query (a small one), the candidates are the same."""
    import random

    from memos.kernel.context import CallContext
    from memos.kernel.ops.search import dense_candidates
    from memos.storage.vector import IndexQuery, parse_entry_id

    rng = random.Random(7)
    words = [f"w{i}x{rng.randint(0, 10**6)}" for i in range(400)]  # a wide vocabulary: no tied distances
    mem.create_cube("team/big")
    mem.create_cube("team/small")
    big = mem.write_many([" ".join(rng.choices(words, k=5)) for _ in range(300)], cube="team/big")
    small = mem.write_many([" ".join(rng.choices(words, k=5)) for _ in range(12)], cube="team/small")
    clock.advance(10)
    before = clock.now()
    clock.advance(10)
    for o in big.results[:40]:
        mem.update(o.id, content=" ".join(rng.choices(words, k=6)))  # old versions stay in the index, closed
    mem.delete(small.results[0].id)
    for cubes, at in ((("team/big",), None), (("team/small",), None), (("team/big", "team/small"), None),
                      (("team/big",), before)):
        for _ in range(5):
            q = IndexQuery(embedding=kernel.embedder.embed([" ".join(rng.choices(words, k=3))])[0], cubes=cubes,
                           limit=50, at=at)
            expected = kernel.store.rowids_of(parse_entry_id(e) for e, _ in kernel.index.query(q))
            scored = dense_candidates(CallContext(kernel, "agent:alice"), q)
            got = [r for r, _ in scored]
            everything = kernel.index.nearest(q.embedding, 10_000)
            rowid = dict(zip(kernel.store.rowids_of(parse_entry_id(e) for e, _ in everything),
                             (round(d, 6) for _, d in everything), strict=False))
            assert len(got) == len(expected) and set(got) <= set(rowid)
            assert [rowid[r] for r in got] == [rowid[r] for r in expected]  # the same, up to the order of ties
            assert [round(d, 6) for _, d in scored] == [rowid[r] for r in got]  # with their distances
