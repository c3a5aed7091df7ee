"""Hybrid retrieval: dense (vector index) and lexical (FTS5 bm25) candidates fused by reciprocal rank fusion.

RRF (Cormack et al., 2009): ``score(d) = sum over retrievers of 1 / (K + rank(d))`` with ``K = 60``. It needs no
score calibration between cosine distances and bm25, and a document found by both retrievers rises above one found
by either alone. Measured on the LoCoMo dev split by ``memos bench retrieval`` (docs/retrieval.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RRF_K = 60


@dataclass(frozen=True, slots=True)
class Fused:
    key: int
    score: float
    dense_rank: int | None
    lexical_rank: int | None


def reciprocal_rank_fusion(dense: Sequence[int], lexical: Sequence[int], *, k: int = RRF_K) -> list[Fused]:
    """Fuse two best-first lists of keys. Ranks are 1-based in the result; ties keep dense order first."""
    dense_rank = {key: i + 1 for i, key in enumerate(dense)}
    lexical_rank = {key: i + 1 for i, key in enumerate(lexical)}
    keys = list(dict.fromkeys([*dense, *lexical]))
    fused = []
    for key in keys:
        score = 0.0
        dr, lr = dense_rank.get(key), lexical_rank.get(key)
        if dr is not None:
            score += 1.0 / (k + dr)
        if lr is not None:
            score += 1.0 / (k + lr)
        fused.append(Fused(key, score, dr, lr))
    order = {key: i for i, key in enumerate(keys)}
    fused.sort(key=lambda f: (-f.score, order[f.key]))
    return fused
