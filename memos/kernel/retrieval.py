"""Hybrid retrieval: dense (vector index) and lexical (FTS5 bm25) candidates fused by reciprocal rank fusion.

RRF (Cormack et al., 2009): ``score(d) = sum over retrievers of 1 / (K + rank(d))``. It needs no score calibration
between cosine distances and bm25, and a document found by both retrievers rises above one found by either alone.

A small ``K``, not the customary 60 (tuned for web-scale result lists): a memory cube is small, and with K = 60 a
memory ranked ~40th by both retrievers outscores one ranked 1st by either, so recall falls as the candidate lists
grow. On the LoCoMo dev split (``memos bench retrieval``, docs/retrieval.md) K = 10 raised recall@10 from 0.641 to
0.675 (and to 0.694 with stop words out of the lexical query).

Hybrid search then reranks the fused candidates (``memos.kernel.ops.search.search_hits``), in this order:
1. **lexical weight** ``LEXICAL_WEIGHT``: bm25's rank counts 1.5 times the dense rank's (on LoCoMo's short turns
   the exact words of a question are the stronger evidence);
2. **speaker/entity**: when the query names exactly one of the candidates' ``speaker`` or ``subject`` (metadata),
   the candidates of that speaker score ``1 + SPEAKER_BOOST`` times more;
3. **temporal**: a query asking when (``when``, ``how long``, ``what year``...) multiplies candidates whose text
   carries a date or a relative date by ``1 + TEMPORAL_BOOST``;
4. **neighbours**: each candidate gains ``NEIGHBOUR_WEIGHT`` times the best score of the memories just before and
   after it in its session (same cube, same ``metadata.session``, adjacent by insertion), and those neighbours join
   the candidates with that score: a turn that answers a question often follows the one the question's words match.
5. **session**: each candidate of a session is multiplied by ``1 + SESSION_BOOST * strength / best strength``,
   a session's strength being the sum of its three best scores (``session_factors``).
The constants were chosen by leave-one-conversation-out cross-validation over the five dev conversations (grid over
K, lexical weight, the three boosts; choose on four, measure on the fifth): held-out recall@10 0.724 and R@1 0.406,
against 0.685 and 0.316 for plain RRF (K = 10) and 0.637 / 0.348 for bm25 alone, measured offline on the same
rankings (docs/retrieval.md gives the ``memos bench retrieval`` numbers).

The dense side embeds a memory of a session after the turn before it (``embedding_text``, applied by the indexer).
Held out the same way, with candidate lists of 125: hybrid recall@10 0.729 -> 0.748, R@1 0.405 -> 0.416; every fold
kept it. Dense search alone loses by it (single turns 0.546, in context 0.495 R@10): the context helps the fusion,
where bm25 already finds the turn that has the question's words and the dense side finds the reply to it. The
session step (5) and a neighbour weight of 0.5 were chosen by all five folds next: held-out R@10 0.763, R@1 0.414.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memos.storage.sqlite import VersionRow
from memos.types import GENERATED_WEIGHT

RRF_K = 5
LEXICAL_WEIGHT = 1.5
SPEAKER_BOOST = 1.0
TEMPORAL_BOOST = 0.5
NEIGHBOUR_WEIGHT = 0.5
SESSION_BOOST = 0.5

_TEMPORAL_QUERY = re.compile(r"^\W*(when|how long|what (?:year|month|date|day|time))\b", re.IGNORECASE)
_DATED = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|ago|recently|last (?:night|week|weekend|month|year|\w+day)|"
    r"next (?:week|month|year)|this (?:week|weekend|month|year|morning)|few (?:days|weeks)|"
    r"(?:19|20)\d\d|january|february|march|april|may|june|july|august|september|october|november|december)\b",
    re.IGNORECASE,
)


def asks_when(query: str) -> bool:
    """The query asks for a time (``when ...``, ``how long ...``, ``what year ...``)."""
    return _TEMPORAL_QUERY.search(query) is not None


def is_dated(text: str) -> bool:
    """The text (without a leading ``[date]`` stamp) names a date or a relative one (``yesterday``, ``last week``)."""
    return _DATED.search(re.sub(r"^\[[^\]]*\]\s*", "", text)) is not None


def embedding_text(content: str, before: VersionRow | None) -> str:
    """The text the vector index embeds for a memory: its content, after the content of the memory inserted just
    before it in the same session (``metadata.session``) when there is one. A turn often answers the one before it
    ("Yes, last Friday!"), and alone its embedding says nothing of what it answers. Lexical search still sees the
    content alone. An update of the turn before does not re-embed this one (the context is the one it was written in).
    """
    return f"{before.content}\n{content}" if before is not None else content


def session_factors(hits: Sequence[tuple[Hashable | None, float]], boost: float = SESSION_BOOST) -> list[float]:
    """Score factors for (session key, score) pairs: a session's strength is the sum of its three best scores, and
    each hit of a session gains ``boost`` times its session's strength over the strongest session's (``1 + boost``
    for the strongest; 1 for a hit of no session). Evidence of one question tends to sit in one session."""
    best: dict[Hashable, list[float]] = {}
    for key, score in hits:
        if key is not None:
            best.setdefault(key, []).append(score)
    strength = {key: sum(sorted(scores, reverse=True)[:3]) for key, scores in best.items()}
    top = max(strength.values(), default=0.0)
    return [1.0 + boost * strength[key] / top if key is not None and top > 0 else 1.0 for key, _ in hits]


def named_in(query: str, names: Iterable[str]) -> str | None:
    """The one of ``names`` the query mentions as a word (case-insensitive); None if none or several."""
    words = set(re.findall(r"[\w'-]+", query.lower()))
    found = {n for n in names if n and n.lower() in words}
    return next(iter(found)) if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class Fused:
    key: Hashable
    score: float
    dense_rank: int | None
    lexical_rank: int | None


def reciprocal_rank_fusion(
    dense: Sequence[int], lexical: Sequence[int], *, k: int = RRF_K, lexical_weight: float = 1.0
) -> list[Fused]:
    """Fuse two best-first lists of keys (a lexical rank counts ``lexical_weight`` times). Ranks are 1-based in the
    result; ties keep dense order first."""
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
            score += lexical_weight / (k + lr)
        fused.append(Fused(key, score, dr, lr))
    order = {key: i for i, key in enumerate(keys)}
    fused.sort(key=lambda f: (-f.score, order[f.key]))
    return fused


@dataclass(slots=True)  # not frozen: a search builds hundreds, and a frozen dataclass's __init__ costs ~2x
class Candidate:
    """What fusion and reranking read of one candidate memory. A kernel builds it from its row
    (``memos.kernel.ops.search``, ``key`` the version's rowid); the shard router from a shard's answer (``key``
    (shard, rowid)), so a search over cubes on several shards is fused by the same code as on one kernel."""

    key: Hashable
    memory_id: str
    cube: str
    passes: bool  # active, and passes the search's filters
    group: bool = False  # a group memory repeats its sources' text: never a hit of its own
    generated: bool = False  # a model's own answer: ranks GENERATED_WEIGHT times lower
    speaker: Any = None  # metadata.speaker / metadata.subject, as stored
    subject: Any = None
    dated: bool = False  # the query asks when, and the text names a date
    session: str | None = None  # metadata.session, as text

    def wire(self) -> dict[str, Any]:
        return {"memory_id": self.memory_id, "cube": self.cube, "passes": self.passes, "group": self.group,
                "generated": self.generated, "speaker": self.speaker, "subject": self.subject, "dated": self.dated,
                "session": self.session}


Neighbours = Callable[[list[str]], Mapping[str, Sequence[Candidate]]]


def fuse_candidates(
    query: str, dense: Sequence[Hashable], lexical: Sequence[Hashable], pool: Mapping[Hashable, Candidate], *,
    mode: str, as_of: bool, neighbours: Neighbours,
) -> list[tuple[Candidate, Fused]]:
    """Every hit of a search, best first: RRF of the ``dense`` and ``lexical`` candidate keys (each best first),
    candidates that fail the filters or are groups out, generated ones down-weighted, and in ``hybrid`` mode the
    reranking steps 2-5 of this module's docstring. ``pool`` holds every candidate by key; ``neighbours(memory
    ids)`` gives each hit's session neighbours (step 4; not for an ``as_of`` search)."""
    hits: list[tuple[Candidate, Fused]] = []
    weight = LEXICAL_WEIGHT if mode == "hybrid" else 1.0
    for item in reciprocal_rank_fusion([key for key in dense if key in pool], lexical, lexical_weight=weight):
        c = pool.get(item.key)
        if c is None or not c.passes or c.group:
            continue
        if c.generated:
            item = Fused(item.key, item.score * GENERATED_WEIGHT, item.dense_rank, item.lexical_rank)
        hits.append((c, item))
    if mode == "hybrid":
        hits = _rerank(query, hits, as_of, neighbours)
    hits.sort(key=lambda h: -h[1].score)  # stable: fusion order breaks ties
    return hits


def _rerank(query: str, hits: list[tuple[Candidate, Fused]], as_of: bool,
            neighbours: Neighbours) -> list[tuple[Candidate, Fused]]:
    names = {str(value) for c, _ in hits for value in (c.speaker, c.subject) if value}
    named = named_in(query, names)
    temporal = asks_when(query)
    scored = []
    for c, item in hits:
        factor = 1.0
        if named is not None and named in (c.speaker, c.subject):
            factor *= 1 + SPEAKER_BOOST
        if temporal and c.dated:
            factor *= 1 + TEMPORAL_BOOST
        scored.append((c, Fused(item.key, item.score * factor, item.dense_rank, item.lexical_rank)))
    if as_of or not scored:
        return _by_session(scored)
    score = {c.memory_id: item.score for c, item in scored}
    near_of = neighbours(list(score))
    out: list[tuple[Candidate, Fused]] = []
    extra: dict[str, tuple[Candidate, float]] = {}
    for c, item in scored:
        near = max((score.get(n.memory_id, 0.0) for n in near_of.get(c.memory_id, ())), default=0.0)
        out.append((c, Fused(item.key, item.score + NEIGHBOUR_WEIGHT * near, item.dense_rank, item.lexical_rank)))
        for n in near_of.get(c.memory_id, ()):
            if n.memory_id not in score and n.passes:
                gain = NEIGHBOUR_WEIGHT * item.score
                if gain > extra.get(n.memory_id, (None, 0.0))[1]:
                    extra[n.memory_id] = (n, gain)
    out += [(n, Fused(n.key, gain, None, None)) for n, gain in extra.values()]
    return _by_session(out)


def _by_session(hits: list[tuple[Candidate, Fused]]) -> list[tuple[Candidate, Fused]]:
    """Step 5: hits of the strongest sessions (per cube) gain."""
    keys = [(c.cube, c.session) if c.session is not None else None for c, _ in hits]
    factors = session_factors(list(zip(keys, (item.score for _, item in hits), strict=True)))
    return [(c, Fused(item.key, item.score * x, item.dense_rank, item.lexical_rank))
            for (c, item), x in zip(hits, factors, strict=True)]
