"""Lexical search's FTS5 probe (``SqliteStore.lexical``) returns exactly what ranking every match does.

The reference is the query lexical search ran before the probe: every FTS5 match joined to ``versions``, filtered,
ordered by bm25 (rowid breaking ties). The store holds two cubes, old versions and deleted memories, so the probe
meets rows that do not pass and has to fall back to the full query for the small cube.
"""

from __future__ import annotations

import random

import pytest

from memos.storage.sqlite import FOREVER, LEXICAL_PROBE_FACTOR, fts_query

WORDS = ["owl", "hawk", "heron", "crane", "finch", "robin", "wren", "lark", "swift", "kite", "tern", "gull", "ibis", "rail", "dove", "stork", "egret", "river", "marsh", "forest", "meadow", "cliff", "shore", "dune", "reed", "pine", "oak"]


def reference(store, query, cubes, limit):
    sql = ("SELECT v.rowid, bm25(versions_fts) AS score FROM versions_fts JOIN versions v ON v.rowid = versions_fts.rowid "
           f"WHERE versions_fts MATCH ? AND v.cube IN ({','.join('?' * len(cubes))}) AND v.state IN ('active') "
           "AND v.valid_to = ? ORDER BY score, v.rowid LIMIT ?")
    return [(r[0], r[1]) for r in store._all(sql, [fts_query(query), *cubes, FOREVER, limit])]


@pytest.fixture
def corpus(mem, kernel):
    rng = random.Random(7)
    mem.create_cube("team/big")
    mem.create_cube("team/small")
    ids = []
    for i in range(240):
        cube = "team/small" if i % 12 == 0 else "team/big"
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
        ids.append(mem.write(cube, f"{text} note{i}").id)
    for memory_id in ids[::5]:
        mem.update(memory_id, content=" ".join(rng.choice(WORDS) for _ in range(6)))  # the old version stays in FTS
    for memory_id in ids[1::9]:
        mem.delete(memory_id)
    return kernel.store


@pytest.mark.parametrize("cubes", [("team/big",), ("team/small",), ("team/big", "team/small")])
@pytest.mark.parametrize("limit", [3, 10, 50])
def test_the_probe_ranks_as_the_full_query_does(corpus, cubes, limit):
    rng = random.Random(limit)
    for _ in range(25):
        query = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
        expected = reference(corpus, query, cubes, limit)
        assert corpus.lexical(query, cubes, None, limit) == expected, query
        assert corpus.lexical(query, cubes, None, limit, probe=False) == expected, query


def test_the_probe_answers_alone_when_enough_rows_pass(corpus, monkeypatch):
    statements = []
    real = corpus._all
    monkeypatch.setattr(corpus, "_all", lambda sql, params=(): statements.append(sql) or real(sql, params))
    hits = corpus.lexical("owl heron marsh", ("team/big",), None, 5)
    assert len(hits) == 5 and not any("JOIN versions v ON v.rowid = versions_fts.rowid" in s for s in statements)
    statements.clear()
    corpus.lexical("owl heron marsh", ("team/small",), None, 5 * LEXICAL_PROBE_FACTOR)  # few small-cube rows pass
    assert any("JOIN versions v ON v.rowid = versions_fts.rowid" in s for s in statements)
