"""Hybrid search: dense + lexical fused by reciprocal rank; filters; several cubes."""

from __future__ import annotations

from memos.kernel.retrieval import reciprocal_rank_fusion


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
