"""``memos bench extraction`` end to end on a tiny LoCoMo-shaped file (real kernel, SQLite and Chroma on disk, the
rule-based extractor; the hashing embedder stands in for MiniLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import HashingEmbedder
from test_bench_retrieval import _sample

from memos.bench.extraction import run_extraction_bench
from memos.models.llm_rules import RuleBasedLanguageModel

pytestmark = pytest.mark.integration


def test_extraction_bench_compares_ingest_with_one_memory_per_turn(tmp_path: Path) -> None:
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([_sample("conv-a")]), encoding="utf-8")
    result = run_extraction_bench(data, tmp_path / "out", llm=RuleBasedLanguageModel(), embedder=HashingEmbedder())
    assert (result["conversations"], result["turns"], result["questions"], result["extractor"]) == (1, 4, 3, "rules")
    turns, ingest = result["systems"]["turns"], result["systems"]["ingest"]
    assert turns["memories"] == 4 and ingest["memories"] == sum(result["decisions"].values()) - result["decisions"].get(
        "noop", 0) - result["decisions"].get("update", 0)
    assert result["evidence_turns"] == 3 and 0 < result["evidence_turns_referenced"] <= 3
    assert 0 < ingest["recall"]["R@10"] <= 1 and turns["recall"]["R@10"] == 1.0
    assert ingest["search_ms"]["p95"] >= ingest["search_ms"]["p50"] > 0
    assert "| ingest |" in (tmp_path / "out" / "extraction.md").read_text()

