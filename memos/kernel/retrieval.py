"""Hybrid retrieval: dense (vector index) and lexical (FTS5 bm25) candidates fused by reciprocal rank fusion.

RRF (Cormack et al., 2009): ``score(d) = sum over retrievers of 1 / (K + rank(d))``. It needs no score calibration
between cosine distances and bm25, and a document found by both retrievers rises above one found by either alone.

``K = 10``, not the customary 60 (tuned for web-scale result lists): a memory cube is small, and with K = 60 a
memory ranked ~40th by both retrievers outscores one ranked 1st by either, so recall falls as the candidate lists
grow. On the LoCoMo dev split (``memos bench retrieval``, docs/retrieval.md) K = 10 raised recall@10 from 0.641 to
0.675 (and to 0.694 with stop words out of the lexical query).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

RRF_K = 10


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
