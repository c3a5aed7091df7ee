"""``memos bench retrieval`` end to end on a tiny synthetic LoCoMo-shaped file: real kernel, SQLite and Chroma on
disk; the hashing embedder stands in for MiniLM so that the test checks the plumbing, not the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fakes import HashingEmbedder

from memos.bench.retrieval import run_retrieval_bench

pytestmark = pytest.mark.integration


def _sample(sample_id: str) -> dict:
    return {
        "sample_id": sample_id,
        "conversation": {
            "speaker_a": "Ann",
            "speaker_b": "Bob",
            "session_1_date_time": "8:00 pm on 1 May, 2021",
            "session_1": [
                {"speaker": "Ann", "dia_id": "D1:1", "text": "I planted tomatoes in the garden."},
                {"speaker": "Bob", "dia_id": "D1:2", "text": "My kayak trip on the river was cold."},
                {"speaker": "Ann", "dia_id": "D1:3", "text": "The violin recital went well.",
                 "blip_caption": "a photo of a violin"},
            ],
            "session_2_date_time": "9:00 am on 2 June, 2021",
            "session_2": [{"speaker": "Bob", "dia_id": "D2:1", "text": "I adopted a grey cat named Pixel."}],
        },
        "qa": [
            {"question": "What did Ann plant in the garden?", "answer": "tomatoes", "evidence": ["D1:1"], "category": 4},
            {"question": "What is the name of Bob's cat?", "answer": "Pixel", "evidence": ["D2:1"], "category": 1},
            {"question": "Which instrument does Ann play?", "answer": "violin", "evidence": ["D1:3"], "category": 3},
            {"question": "What did Bob sell?", "evidence": ["D1:2"], "category": 5, "adversarial_answer": "a kayak"},
        ],
    }


def test_bench_reports_recall_latency_and_ingest_for_each_system(tmp_path: Path) -> None:
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([_sample("conv-a"), _sample("conv-b")]), encoding="utf-8")
    out = tmp_path / "out"

    result = run_retrieval_bench(data, out, ks=(1, 3), embedder=HashingEmbedder())

    assert (result["conversations"], result["turns"], result["questions"]) == (2, 8, 6)
    assert set(result["systems"]) == {"memos hybrid", "dense baseline", "lexical (FTS5 bm25)"}
    hybrid = result["systems"]["memos hybrid"]
    assert hybrid["recall"]["R@3"] >= hybrid["recall"]["R@1"] > 0
    assert set(hybrid["per_category"]) == {"1 multi-hop", "3 open-domain", "4 single-hop"}
    assert hybrid["latency_ms"]["p95"] >= hybrid["latency_ms"]["p50"] > 0
    assert result["ingest"]["memories"] == 8 and result["ingest"]["memories_per_s"] > 0
    assert json.loads((out / "retrieval.json").read_text()) == result
    table = (out / "retrieval.md").read_text()
    assert "| memos hybrid |" in table and "| dense baseline |" in table
    assert (out / "retrieval.png").stat().st_size > 0
    assert run_retrieval_bench(data, tmp_path / "one", limit_conversations=1, ks=(1,),
                               embedder=HashingEmbedder())["questions"] == 3


def test_bench_refuses_k_outside_the_search_limit(tmp_path: Path) -> None:
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([_sample("conv-a")]), encoding="utf-8")
    with pytest.raises(ValueError, match="k must be within"):
        run_retrieval_bench(data, tmp_path / "out", ks=(0, 5), embedder=HashingEmbedder())
