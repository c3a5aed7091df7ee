"""Lexical pruning (``SqliteStore.lexical``, ``_rare_first``): when a query has common and rare words, only the
documents with a rare word are ranked, each by its bm25 for the whole query; what the full query gives those
documents, in the same order. Two cubes, old versions and deleted memories, as in test_lexical_probe."""

from __future__ import annotations

import random

import pytest

from memos.storage import sqlite as sqlite_module
from memos.storage.sqlite import FOREVER, _or

COMMON = ["lives", "keeps", "code"]
RARE = ["owl", "hawk", "heron", "crane", "finch", "robin", "wren", "lark", "swift", "kite", "tern", "gull"]


def matches(store, words, cubes):
    """(rowid, bm25) of every passing version that matches any of ``words``, by bm25 then rowid (the full query)."""
    sql = ("SELECT v.rowid, bm25(versions_fts) AS score FROM versions_fts JOIN versions v ON v.rowid = versions_fts.rowid "
           f"WHERE versions_fts MATCH ? AND v.cube IN ({','.join('?' * len(cubes))}) AND v.state IN ('active') "
           "AND v.valid_to = ? ORDER BY score, v.rowid")
    return [(r[0], r[1]) for r in store._all(sql, [_or(words), *cubes, FOREVER])]


@pytest.fixture
def corpus(mem, kernel):
    rng = random.Random(11)
    mem.create_cube("team/big")
    mem.create_cube("team/small")
    ids = []
    for i in range(240):
        words = [w for w in COMMON if rng.random() < 0.6] + [w for w in RARE if rng.random() < 0.06]
        rng.shuffle(words)
        ids.append(mem.write("team/small" if i % 12 == 0 else "team/big", " ".join(words or ["plain"]) + f" n{i}").id)
    for memory_id in ids[::5]:
        mem.update(memory_id, content=" ".join(rng.choice(COMMON + RARE) for _ in range(5)))  # the old version stays in FTS
    for memory_id in ids[1::9]:
        mem.delete(memory_id)
    return kernel.store


@pytest.fixture
def pruning(monkeypatch):
    """Thresholds for a store of a few hundred rows: a word in more than a fifth of them is common."""
    monkeypatch.setattr(sqlite_module, "COMMON_FRACTION", 0.2)
    monkeypatch.setattr(sqlite_module, "COMMON_MIN_ROWS", 0)


def statements_of(store, monkeypatch) -> list[str]:
    seen: list[str] = []
    real = store._all
    monkeypatch.setattr(store, "_all", lambda sql, params=(): seen.append(f"{sql} {list(params)}") or real(sql, params))
    return seen


@pytest.mark.parametrize("cubes", [("team/big",), ("team/small",), ("team/big", "team/small")])
@pytest.mark.parametrize("limit", [3, 10, 50])
def test_documents_with_a_rare_word_rank_as_in_the_full_query(corpus, pruning, monkeypatch, cubes, limit):
    rng = random.Random(limit)
    seen = statements_of(corpus, monkeypatch)
    for _ in range(20):
        common = rng.sample(COMMON, rng.randint(1, 3))
        rare = rng.sample(RARE, rng.randint(1, 3))
        words = common + rare
        rng.shuffle(words)
        with_rare = {r for r, _ in matches(corpus, rare, cubes)}
        expected = [x for x in matches(corpus, words, cubes) if x[0] in with_rare][:limit]
        got = corpus.lexical(" ".join(words), cubes, None, limit)
        assert [r for r, _ in got] == [r for r, _ in expected], words
        assert all(abs(a[1] - b[1]) < 1e-9 for a, b in zip(got, expected, strict=True))
    assert any(") AND (" in s for s in seen)  # the pruned query ran


def test_common_words_alone_or_rare_words_alone_rank_every_match(corpus, pruning):
    for words in (["lives", "keeps"], ["owl", "heron"], ["code"], ["lives", "nowhere"]):  # "nowhere": in no row
        assert corpus.lexical(" ".join(words), ("team/big",), None, 20) == matches(corpus, words, ("team/big",))[:20]


def test_no_pruning_below_the_default_thresholds(corpus, monkeypatch):
    seen = statements_of(corpus, monkeypatch)
    words = ["lives", "keeps", "owl", "wren"]
    assert corpus.lexical(" ".join(words), ("team/big",), None, 10) == matches(corpus, words, ("team/big",))[:10]
    assert not any(") AND (" in s for s in seen)


def test_the_corpus_has_common_and_rare_words(corpus):
    rows = corpus._one("SELECT max(id) FROM versions_fts_docsize")[0]
    count = {w: corpus._one("SELECT count(*) FROM versions_fts WHERE versions_fts MATCH ?", (f'"{w}"',))[0]
             for w in COMMON + RARE}
    assert all(count[w] > 0.2 * rows for w in COMMON) and all(0 < count[w] <= 0.2 * rows for w in RARE)


def test_rare_words_over_the_budget_give_up_their_commonest(corpus, pruning, monkeypatch):
    monkeypatch.setattr(sqlite_module, "RARE_BUDGET_ROWS", 25)
    df = {w: corpus._one("SELECT count(*) FROM versions_fts WHERE versions_fts MATCH ?", (f'"{w}"',))[0] for w in RARE}
    rng = random.Random(5)
    narrowed = 0
    for _ in range(30):
        rare = rng.sample(RARE, 3)
        words = ["lives", *rare]
        kept = sorted(rare, key=lambda w: (df[w], w))
        while len(kept) > 1 and sum(df[w] for w in kept) > 25:
            kept.pop()  # the commonest (ties: the greater word)
        narrowed += len(kept) < 3
        with_kept = {r for r, _ in matches(corpus, kept, ("team/big",))}
        expected = [x for x in matches(corpus, words, ("team/big",)) if x[0] in with_kept][:10]
        got = corpus.lexical(" ".join(words), ("team/big",), None, 10)
        assert [r for r, _ in got] == [r for r, _ in expected], (words, kept)
    assert narrowed
