"""memos bench scale: its corpora nest across sizes and its queries are distinct (no query embedding is cached)."""

from __future__ import annotations

import random

from memos.bench.scale import corpus, queries, render_markdown


def test_corpora_nest_and_hold_distinct_texts():
    small, large = corpus(200), corpus(500)
    assert large[:200] == small and len(set(large)) == 500


def test_queries_are_distinct_word_windows_of_the_texts():
    texts = corpus(300)
    qs = queries(texts, 100, random.Random(1))
    assert len(set(qs)) == 100
    assert all(any(q in t for t in texts) for q in qs)


def test_queries_shared_across_the_timed_parts_of_a_size_never_repeat():
    # On a small templated corpus, independent draws repeat windows (a repeated query would time the embedder's
    # cache); with one ``seen`` set per size, no query is timed twice.
    texts, rng, seen = corpus(300), random.Random(2), set()
    parts = [queries(texts, 100, rng, seen) for _ in range(5)]
    flat = [q for part in parts for q in part]
    assert len(flat) == len(set(flat)) == 500 and seen == set(flat)


def test_the_report_renders_every_size_mode_and_transport():
    run = {"memories": 10, "embedder_alone_texts_per_s": 100.0, "embedder_sample": 10, "ingest_memories_per_s": 95.0,
           "ingest_ratio_to_embedder": 0.95, "ray_overhead_p50_ms": 0.8,
           "search_ms": {t: {m: {"p50": 1.0, "p95": 2.0, "p99": 3.0} for m in ("hybrid", "dense", "lexical")}
                         for t in ("in_process", "ray")}}
    report = {"settings": {"data": "synthetic facts", "batch": 1000, "writers": 2, "queries": 5, "k": 10,
                           "sqlite_synchronous": "FULL", "index": "embedded Chroma"},
              "environment": {"cpus": 2, "load_average_end": [1.0, 1.0, 1.0]}, "runs": [run]}
    text = render_markdown(report)
    assert "| 10 | 100.0 (on 10) | 95.0 | 0.95 | 0.8 |" in text
    assert text.count("| 10 | ") == 1 + 6


def test_the_report_renders_the_parts_of_a_search_and_the_ratio_to_the_embedding_floor():
    part = {"p50": 1.5, "p95": 2.5, "p99": 3.5}
    run = {"memories": 10, "embedder_alone_texts_per_s": 100.0, "embedder_sample": 10, "ingest_memories_per_s": 95.0,
           "ingest_ratio_to_embedder": 0.95, "hybrid_p95_to_embedding_p50": 4.2,
           "stages_ms": {"query_embedding": part, "lexical_query": part},
           "hybrid_before_after_ms": {"after": part, "before": {"p50": 4.0, "p95": 5.0, "p99": 6.0}},
           "search_ms": {"in_process": {m: part for m in ("hybrid", "dense", "lexical")}}}
    report = {"settings": {"data": "synthetic facts", "batch": 1000, "writers": 2, "queries": 5, "k": 10,
                           "sqlite_synchronous": "FULL", "index": "embedded Chroma"},
              "environment": {"cpus": 2, "load_average_end": [1.0, 1.0, 1.0]}, "runs": [run]}
    text = render_markdown(report)
    assert "| 10 | query_embedding | 1.5 | 2.5 | 3.5 |" in text and "| 10 | lexical_query | 1.5 | 2.5 | 3.5 |" in text
    assert "| 10 | hybrid p95 / query embedding p50 | 4.2 | | |" in text
    assert "| 10 | hybrid search after (in turn) | 1.5 | 2.5 | 3.5 |" in text
    assert "| 10 | hybrid search before (in turn) | 4.0 | 5.0 | 6.0 |" in text
