"""recall@k, its averages, latency percentiles, and reciprocal rank fusion."""

from __future__ import annotations

import math

import pytest

from memos.bench.metrics import percentile, recall_at_k, recall_table
from memos.kernel.retrieval import RRF_K, reciprocal_rank_fusion


def test_recall_at_k_is_the_fraction_of_evidence_in_the_top_k() -> None:
    ranked = ["D1:1", "D1:2", "D2:5", "D3:1"]
    assert recall_at_k(ranked, ["D1:2"], 1) == 0.0
    assert recall_at_k(ranked, ["D1:2"], 2) == 1.0
    assert recall_at_k(ranked, ["D1:2", "D3:1"], 2) == 0.5
    assert recall_at_k(ranked, ["D1:2", "D3:1"], 25) == 1.0
    assert recall_at_k(ranked, ["D9:9"], 25) == 0.0


def test_recall_counts_duplicates_once() -> None:
    assert recall_at_k(["D1:1", "D1:1"], ["D1:1", "D1:1", "D2:2"], 2) == 0.5


def test_recall_refuses_empty_evidence_and_k_below_one() -> None:
    with pytest.raises(ValueError):
        recall_at_k(["D1:1"], [], 1)
    with pytest.raises(ValueError):
        recall_at_k(["D1:1"], ["D1:1"], 0)


def test_recall_table_averages_questions_equally() -> None:
    table = recall_table([(["a", "b"], ["a"]), (["c", "d"], ["d", "e"])], [1, 2])
    assert table == {"R@1": 0.5, "R@2": 0.75}
    assert all(math.isnan(v) for v in recall_table([], [1]).values())


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 95) == pytest.approx(3.85)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_rrf_scores_are_sums_of_reciprocal_ranks() -> None:
    fused = {f.key: f for f in reciprocal_rank_fusion([1, 2, 3], [3, 4])}
    assert fused[3].score == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert fused[1].score == pytest.approx(1 / (RRF_K + 1))
    assert (fused[3].dense_rank, fused[3].lexical_rank) == (3, 1)
    assert (fused[4].dense_rank, fused[4].lexical_rank) == (None, 2)


def test_rrf_puts_documents_found_by_both_retrievers_first() -> None:
    order = [f.key for f in reciprocal_rank_fusion([1, 2, 3], [3, 2, 5])]
    assert set(order[:2]) == {2, 3}
    assert set(order) == {1, 2, 3, 5}


def test_rrf_ties_keep_dense_order_first() -> None:
    order = [f.key for f in reciprocal_rank_fusion([1, 2], [3, 4])]
    assert order == [1, 3, 2, 4]


def test_rrf_with_one_empty_list_keeps_the_other_order() -> None:
    assert [f.key for f in reciprocal_rank_fusion([], [7, 8, 9])] == [7, 8, 9]
    assert [f.key for f in reciprocal_rank_fusion([7, 8, 9], [])] == [7, 8, 9]
