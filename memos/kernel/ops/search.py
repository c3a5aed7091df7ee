"""Search and request-time scheduling: ``search`` (hybrid retrieval) and ``assemble_context`` (which memory a
request gets, and how).

``assemble_context(query, cubes, token_budget, k)``:
1. hybrid search for ``query`` (the caller needs read on every cube), best ``k`` first;
2. hits are taken in score order (ties keep the search's order): a memory's kind never changes its place;
3. every hit's tokens count against ``token_budget``, cached or not (a KV cache fills the model's context as its
   text would); one that does not fit what is left is skipped, with the reason. So migrating a memory changes the
   latency of a prompt, never which memories it holds;
4. a kept hit is *kv* (its activation cache is injected: no prefill) if it is an activation memory whose payload
   was built for the loaded model, is not stale, and every kept hit before it is kv too (caches can only be the
   prompt's prefix); else *text* (its tokens are prefilled). The prompt's memories are in the plan's order.
``token_budget=None`` is half the model's context (``context_length() // 2``: 4096 tokens for SmolLM2), or
``DEFAULT_BUDGET_WITHOUT_MODEL`` without a model host. Every decision carries a reason. Token counts come from the
model host's tokenizer, or are estimated (characters / 4, ``estimated=True``) when no model host is configured.
A memory named with ``generate(memory=[...])`` that is skipped is also a warning in ``plan.warnings`` and the log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from memos import syscalls as sc
from memos.errors import InvalidSyscall
from memos.kernel.authz import require_cube
from memos.kernel.context import CallContext
from memos.kernel.ops.groups import GROUP_KEY, prefer_groups
from memos.kernel.ops.related import related_rows
from memos.kernel.reads import audit_read, record_reads
from memos.kernel.retrieval import Candidate, Fused, asks_when, fuse_candidates, is_dated
from memos.kernel.versions import to_memory
from memos.storage.sqlite import SqliteStore, VersionRow
from memos.storage.vector import IndexQuery, parse_entry_id
from memos.types import (
    ContextItem,
    ContextPlan,
    Kind,
    Right,
    SearchHit,
    SearchResult,
    ShardCandidates,
    Source,
    State,
    to_epoch,
)

_CANDIDATES = 50  # per retriever, at least; more for larger k
PROBE_FACTOR = 2  # an unfiltered dense probe fetches this many times the candidates (dense_candidates)
#: A memory brought into search results by link expansion scores this fraction of the hit that brought it.
EXPAND_DECAY = 0.9
DEFAULT_BUDGET_WITHOUT_MODEL = 512
_TIE = 1e-9


# ------------------------------------------------------------------------------------------------------ search

def search(ctx: CallContext, call: sc.Search) -> BaseModel:
    if call.shard_phase == "candidates":
        return shard_candidates(ctx, call)
    cubes = tuple(dict.fromkeys(call.cubes))
    at = to_epoch(call.as_of) if call.as_of is not None else None
    if call.shard_phase == "hits":
        hits = shard_hits(ctx, call, cubes)
    else:
        hits = search_hits(ctx, call.query, cubes, call.k, call.filters, at=at, mode=call.mode)
    via: dict[int, str] = {}
    if call.expand and at is None:
        hits, via = expand_hits(ctx, hits, cubes, call.filters, call.k, call.expand)
    record_reads(ctx, [row.memory_id for row, _ in hits], ctx.kernel.clock.now())
    audit_read(ctx, call.op, cubes[0] if len(cubes) == 1 else None, detail=f"{len(hits)} hits in {','.join(cubes)}"[:1000])
    return SearchResult(hits=tuple(
        SearchHit(memory=to_memory(ctx, row), score=item.score,
                  dense_rank=item.dense_rank, lexical_rank=item.lexical_rank, via=via.get(row.rowid))
        for row, item in hits
    ))


def candidate_limit(k: int) -> int:
    """Candidates each retriever contributes to the fusion of a search for the best ``k``."""
    return max(_CANDIDATES, k * 5)


#: What a lexical leg depends on: (query, cubes, as-of instant or None, candidate limit).
LexicalKey = tuple[str, tuple[str, ...], float | None, int]


@dataclass(frozen=True, slots=True)
class LexicalLeg:
    """The lexical candidates of a hybrid search ((rowid, bm25) best first) and their rows, read on a worker thread
    while ``Kernel.execute`` embedded the query (``lexical_ahead``). ``changes`` is ``SqliteStore.changes`` read
    before the leg ran."""

    key: LexicalKey
    found: list[tuple[int, float]]
    rows: dict[int, VersionRow]
    changes: int


def lexical_ahead(call: Any) -> LexicalKey | None:
    """The lexical leg that ``call``'s handler will run and that can run while its query is embedded: that of a
    hybrid ``search`` or of ``assemble_context``; None for any other call (and for a shard's ``hits`` phase of a
    search, which runs no leg)."""
    if isinstance(call, sc.Search) and call.mode == "hybrid" and call.shard_phase != "hits":
        at = to_epoch(call.as_of) if call.as_of is not None else None
        return (call.query, tuple(dict.fromkeys(call.cubes)), at, candidate_limit(call.k))
    if isinstance(call, sc.AssembleContext):
        return (call.query, tuple(dict.fromkeys(call.cubes)), None, candidate_limit(call.k))
    return None


def run_lexical_leg(store: SqliteStore, key: LexicalKey) -> LexicalLeg:
    """The lexical leg ``key`` names, with the store's change count before it ran (no kernel lock needed: every
    statement of the store waits for any open transaction, so the leg reads committed rows only)."""
    changes = store.changes
    query, cubes, at, limit = key
    found = store.lexical(query, cubes, at, limit)
    return LexicalLeg(key, found, store.versions_by_rowid([r for r, _ in found]), changes)


def _lexical_candidates(ctx: CallContext, key: LexicalKey) -> tuple[list[tuple[int, float]], dict[int, VersionRow]]:
    """The lexical leg's (rowid, bm25) and the rows already read for them: the leg run ahead when it is this leg
    and nothing was written since it ran (so it is what running it now would give), else run now (no row read)."""
    store, ready = ctx.kernel.store, ctx.lexical_ready
    ctx.lexical_ready = None
    if ready is not None and ready.key == key and ready.changes == store.changes:
        return ready.found, ready.rows
    query, cubes, at, limit = key
    return store.lexical(query, cubes, at, limit), {}


class _Gathered:
    """A search's candidates on this kernel: each retriever's (rowid, raw score) best first (cosine distance,
    bm25: lower is better), and every candidate's row and ``Candidate``, by rowid."""

    def __init__(self, ctx: CallContext, f: sc.SearchFilters, temporal: bool) -> None:
        self.ctx, self.filters, self.temporal = ctx, f, temporal
        self.dense: list[tuple[int, float]] = []
        self.lexical: list[tuple[int, float]] = []
        self.rows: dict[int, VersionRow] = {}
        self.pool: dict[int, Candidate] = {}

    def add(self, rows: dict[int, VersionRow]) -> None:
        for rowid, row in rows.items():
            if rowid not in self.pool:
                self.rows[rowid] = row
                self.pool[rowid] = _candidate(row, self.filters, self.temporal)

    def neighbours(self, memory_ids: list[str]) -> dict[str, list[Candidate]]:
        """Session neighbours (``insertion_neighbours``) of these memories, as candidates (their rows kept)."""
        found = self.ctx.kernel.store.insertion_neighbours(memory_ids)
        self.add({n.rowid: n for near in found.values() for n in near})
        return {memory_id: [self.pool[n.rowid] for n in near] for memory_id, near in found.items()}


def _candidate(row: VersionRow, f: sc.SearchFilters, temporal: bool) -> Candidate:
    meta = row.metadata
    return Candidate(key=row.rowid, memory_id=row.memory_id, cube=row.cube, passes=_passes(row, f),
                     group=GROUP_KEY in meta, generated=row.provenance.get("source") == Source.GENERATED,
                     speaker=meta.get("speaker"), subject=meta.get("subject"),
                     dated=temporal and is_dated(row.content),
                     session=str(meta["session"]) if meta.get("session") is not None else None)


def gather(ctx: CallContext, query: str, cubes: tuple[str, ...], k: int, f: sc.SearchFilters, *,
           at: float | None = None, mode: str = "hybrid") -> _Gathered:
    """Each retriever's candidates for a search (ACL checked), with their rows."""
    store = ctx.kernel.store
    for cube in cubes:
        require_cube(ctx, cube, Right.READ)
    limit = candidate_limit(k)
    out = _Gathered(ctx, f, mode == "hybrid" and asks_when(query))
    if mode in ("hybrid", "dense"):
        equals = {"trust": f.trust.value} if f.trust else {}
        one_of: dict[str, tuple[str, ...]] = {}
        if f.kinds:
            one_of["kind"] = tuple(x.value for x in f.kinds)
        if f.authors:
            one_of["author"] = tuple(f.authors)
        if f.sources:
            one_of["source"] = tuple(x.value for x in f.sources)
        q = IndexQuery(embedding=ctx.query_vector(query), cubes=cubes, limit=limit, at=at, equals=equals, one_of=one_of)
        out.dense = dense_candidates(ctx, q)
    read: dict[int, VersionRow] = {}  # the lexical leg's rows, when it ran ahead
    if mode in ("hybrid", "lexical"):
        out.lexical, read = _lexical_candidates(ctx, (query, cubes, at, limit))
    wanted = dict.fromkeys([r for r, _ in out.dense] + [r for r, _ in out.lexical])
    read |= store.versions_by_rowid([r for r in wanted if r not in read])  # one query for the others
    out.add(dict(sorted(read.items())))  # by rowid, as one query for all of them gives them
    return out


def search_hits(
    ctx: CallContext, query: str, cubes: tuple[str, ...], k: int, f: sc.SearchFilters, *,
    at: float | None = None, mode: str = "hybrid",
) -> list[tuple[VersionRow, Fused]]:
    """Hybrid retrieval with ACL checks and filters; best first. Does not count reads (callers decide)."""
    found = gather(ctx, query, cubes, k, f, at=at, mode=mode)
    ranked = fuse_candidates(query, [r for r, _ in found.dense], [r for r, _ in found.lexical], found.pool,
                             mode=mode, as_of=at is not None, neighbours=found.neighbours)
    return [(found.rows[c.key], item) for c, item in ranked[:k]]  # type: ignore[index]


def shard_candidates(ctx: CallContext, call: sc.Search) -> ShardCandidates:
    """Phase 1 of a search over cubes on several shards (``memos.transports.router``): this shard's candidates
    for its cubes with each retriever's raw score, what fusion reads of each (and of their session neighbours),
    and the lexical candidates' bm25 statistics (``SqliteStore.lexical_stats``), so that the router scores and
    fuses them all at once, as one kernel does. Counts no read."""
    at = to_epoch(call.as_of) if call.as_of is not None else None
    found = gather(ctx, call.query, tuple(dict.fromkeys(call.cubes)), call.k, call.filters, at=at, mode=call.mode)
    near: dict[str, list[int]] = {}
    if call.mode == "hybrid" and at is None:
        passing = [c.memory_id for c in found.pool.values() if c.passes and not c.group]
        near = {m: [int(n.key) for n in ns] for m, ns in found.neighbours(passing).items()}  # type: ignore[call-overload]
    stats = ctx.kernel.store.lexical_stats(call.query, [r for r, _ in found.lexical]) if found.lexical else None
    return ShardCandidates(dense=tuple(found.dense), lexical=tuple(found.lexical),
                           pool={rowid: c.wire() for rowid, c in found.pool.items()}, neighbours=near,
                           lexical_stats=stats)


def shard_hits(ctx: CallContext, call: sc.Search, cubes: tuple[str, ...]) -> list[tuple[VersionRow, Fused]]:
    """Phase 2 of a search over several shards: the rows of the hits the router chose on this shard, with the
    scores it fused (reads are counted, and expansion runs on them, as for any search)."""
    for cube in cubes:
        require_cube(ctx, cube, Right.READ)
    rows = ctx.kernel.store.versions_by_rowid([h.rowid for h in call.shard_hits])
    hits = []
    for h in call.shard_hits:
        row = rows.get(h.rowid)
        if row is None or row.cube not in cubes:
            raise InvalidSyscall(f"shard_hits names version {h.rowid}, which is not in the searched cubes")
        hits.append((row, Fused(row.rowid, h.score, h.dense_rank, h.lexical_rank)))
    return hits


def dense_candidates(ctx: CallContext, q: IndexQuery) -> list[tuple[int, float]]:
    """(rowid, cosine distance) of the best ``q.limit`` index entries that pass ``q``, best first.

    First an unfiltered probe of ``PROBE_FACTOR * limit`` neighbours, checked against SQLite's columns (cube, state,
    validity): a filtered index query filters metadata before the vector search, which made Chroma's dense query
    10x slower at 10k entries, and fetching metadata with the probe costs more than the search itself
    (docs/performance.md). When at least ``limit`` probed entries pass, they are exactly the best ``limit`` passing
    entries (a better one would be in the probe too). Otherwise (a small cube in a large index, or filters on trust,
    kind, author or source) the index's filtered query answers.
    """
    store, index = ctx.kernel.store, ctx.kernel.index
    if not q.equals and not q.one_of:
        probe = index.nearest(q.embedding, PROBE_FACTOR * q.limit)
        distance = {parse_entry_id(eid): d for eid, d in probe}
        passing = [(rowid, float(distance[pair])) for pair, rowid in
                   store.rowid_pairs_of(distance, cubes=q.cubes, at=q.at, states=q.states)]
        if len(passing) >= q.limit or len(probe) < PROBE_FACTOR * q.limit:  # enough, or the whole index was probed
            return passing[: q.limit]
    distance = {parse_entry_id(eid): d for eid, d in index.query(q)}
    return [(rowid, float(distance[pair])) for pair, rowid in store.rowid_pairs_of(distance)]


def expand_hits(
    ctx: CallContext, hits: list[tuple[VersionRow, Fused]], cubes: tuple[str, ...], filters: sc.SearchFilters, k: int,
    per_hit: int,
) -> tuple[list[tuple[VersionRow, Fused]], dict[int, str]]:
    """Hits plus up to ``per_hit`` linked memories of each (in the searched cubes, passing the filters), each
    scored ``EXPAND_DECAY`` times the hit that brought it; best ``k``. Returns them and, by row id, how each
    added one is linked."""
    present = {row.memory_id for row, _ in hits}
    added: list[tuple[VersionRow, Fused]] = []
    via: dict[int, str] = {}
    for row, item in hits:
        taken = 0
        for other, relation, _ in related_rows(ctx, row):
            if taken == per_hit:
                break
            if other.memory_id in present or other.cube not in cubes or not _passes(other, filters):
                continue
            present.add(other.memory_id)
            taken += 1
            added.append((other, Fused(other.rowid, item.score * EXPAND_DECAY, None, None)))
            via[other.rowid] = f"{relation} of {row.memory_id}"
    merged = sorted([*hits, *added], key=lambda h: -h[1].score)[:k]
    return merged, via


def _passes(row: VersionRow, f: sc.SearchFilters) -> bool:
    prov = row.provenance
    if row.state != State.ACTIVE:
        return False
    if f.tags and not set(f.tags) <= set(row.tags):
        return False
    if any(row.metadata.get(k) != v for k, v in f.metadata.items()):
        return False
    if f.trust and prov.get("trust", "trusted") != f.trust.value:
        return False
    if f.kinds and row.kind not in {k.value for k in f.kinds}:
        return False
    if f.authors and prov.get("author") not in f.authors:
        return False
    return not (f.sources and prov.get("source") not in {s.value for s in f.sources})


# ------------------------------------------------------------------------------------------------------ context

def usable_kv(ctx: CallContext, row: VersionRow) -> str | None:
    """None if the row's activation payload can be injected, else why not."""
    model = ctx.kernel.model
    if row.kind != Kind.ACTIVATION or row.payload is None:
        return "plaintext memory"
    if row.stale:
        return "activation cache is stale (a source changed)"
    if model is None:
        return "no model host to inject the cache"
    if row.fingerprint != model.fingerprint().model_dump():
        return "activation cache was built for another model"
    return None


def usable_adapter(ctx: CallContext, row: VersionRow, *, allow_stale: bool = False,
                   allow_unadopted: bool = False) -> str | None:
    """None if the row's adapter can be applied, else why not. An adapter whose evaluation missed its gate is not
    applied unless ``allow_unadopted`` (a request that names it); one from before gating counts as adopted."""
    model = ctx.kernel.model
    if row.kind != Kind.PARAMETRIC or row.payload is None:
        return "not an adapter"
    if row.state != State.ACTIVE:
        return f"adapter is {row.state}"
    if row.stale and not allow_stale:
        return "adapter is stale (a source changed since it was trained)"
    if model is None:
        return "no model host to apply the adapter"
    if row.fingerprint != model.fingerprint().model_dump():
        return "adapter was trained on another base model"
    adoption = row.metadata.get("adoption") or {}
    if adoption.get("adopted") is False and not allow_unadopted:
        return "adapter not adopted: " + "; ".join(adoption.get("reasons") or ["its evaluation missed the gate"])
    return None


def token_budget(ctx: CallContext, requested: int | None) -> int:
    """``requested``, or the default: half the model's context (the other half is the conversation's)."""
    if requested is not None:
        return requested
    if ctx.kernel.model is None:
        return DEFAULT_BUDGET_WITHOUT_MODEL
    return ctx.kernel.model.context_length() // 2


def covered_sources(row: VersionRow) -> dict[str, int]:
    """The memories an adopted adapter stands in for: its sources at the versions it learnt, minus those its
    evaluation marked weak (a trained question about them was answered wrong)."""
    weak = set((row.metadata.get("adoption") or {}).get("weak_sources") or ())
    return {ref["id"]: ref["version"] for ref in row.provenance.get("derived_from", ()) if ref["id"] not in weak}


def plan_items(
    ctx: CallContext, candidates: list[tuple[VersionRow, float, str]], token_budget: int
) -> tuple[list[ContextItem], bool]:
    """Decide kv / text / skip for (row, score, why-found) candidates, best first."""
    model = ctx.kernel.model
    texts = [row.content for row, _, _ in candidates]
    if model is not None and texts:
        counts, estimated = model.count_tokens(texts), False
    else:
        counts, estimated = [len(t) // 4 + 8 for t in texts], True
    options = []
    for (row, score, found), tokens in zip(candidates, counts, strict=True):
        unusable = usable_kv(ctx, row)
        options.append((row, score, found, tokens, unusable))
    # Best first by relevance alone (a stable sort: ties keep the search's order), whatever the memory's kind.
    options.sort(key=lambda o: -round(o[1] / _TIE) * _TIE)
    items: list[ContextItem] = []
    left = token_budget
    prefix = True  # caches are injected as the prompt's prefix only: until the first memory kept as text
    # The best usable adapter among the candidates is applied; under it, KV caches are not valid (they were
    # computed without it), so activation memories go in as text.
    adapter = next((o[0] for o in options if usable_adapter(ctx, o[0]) is None), None)
    # Its sources, at the versions it learnt (an adapter with a changed source is stale, so never here), are not
    # put in the prompt: the adapter answers for them. Weak ones go in as usual.
    covered = covered_sources(adapter) if adapter is not None else {}
    for row, score, found, tokens, unusable in options:
        common = {"memory_id": row.memory_id, "version": row.version, "kind": row.kind, "score": score}
        if covered.get(row.memory_id) == row.version and row.kind != Kind.PARAMETRIC:
            items.append(ContextItem(**common, use="covered", tokens=tokens,
                                     reason=f"{found}; covered by adapter {adapter.memory_id}: {tokens} prompt "
                                            "tokens saved"))
            continue
        if row.kind == Kind.PARAMETRIC:
            why = usable_adapter(ctx, row)
            if adapter is not None and row.memory_id == adapter.memory_id:
                items.append(ContextItem(**common, use="adapter", tokens=0,
                                         reason=f"{found}; adapter trained on its sources: no prompt tokens"))
            else:
                items.append(ContextItem(**common, use="skip", tokens=tokens,
                                         reason=f"{found}; {why or 'another adapter is applied'}"))
            continue
        if adapter is not None and unusable is None:
            unusable = "activation cache not valid under an adapter"
        if tokens > left:
            items.append(ContextItem(**common, use="skip", tokens=tokens,
                                     reason=f"{found}; {tokens} tokens exceed the {left} left of the budget"))
            continue
        left -= tokens
        if unusable is None and prefix:
            items.append(ContextItem(**common, use="kv", tokens=0, cached_tokens=tokens,
                                     reason=f"{found}; activation cache for the loaded model: {tokens} tokens, no prefill"))
            continue
        prefix = False
        if unusable is None:
            why = "activation cache not at the front of the prompt (a memory before it goes in as text): prefilled"
        else:
            why = unusable if unusable != "plaintext memory" else "plaintext"
        items.append(ContextItem(**common, use="text", tokens=tokens, reason=f"{found}; {why}: {tokens} prompt tokens"))
    return items, estimated


def assemble(ctx: CallContext, query: str, cubes: tuple[str, ...], k: int, token_budget: int,
             filters: sc.SearchFilters) -> tuple[ContextPlan, dict[str, VersionRow]]:
    hits = search_hits(ctx, query, cubes, k, filters)
    candidates = []
    for rank, (row, item) in enumerate(hits, 1):
        ranks = ", ".join(x for x in (
            f"dense {item.dense_rank}" if item.dense_rank else "", f"lexical {item.lexical_rank}" if item.lexical_rank else ""
        ) if x)
        candidates.append((row, item.score, f"search rank {rank} ({ranks})"))
    items, estimated = plan_items(ctx, candidates, token_budget)
    items, groups = prefer_groups(ctx, items, cubes)
    return context_plan(query, token_budget, items, estimated), {r.memory_id: r for r, _ in hits} | groups


def context_plan(query: str, budget: int, items: list[ContextItem], estimated: bool,
                 warnings: tuple[str, ...] = ()) -> ContextPlan:
    return ContextPlan(warnings=warnings,
        query=query, token_budget=budget, items=tuple(items),
        text_tokens=sum(i.tokens for i in items if i.use == "text"),
        cached_tokens=sum(i.cached_tokens for i in items if i.use == "kv"), estimated=estimated,
        adapter=next((i.memory_id for i in items if i.use == "adapter"), None),
        covered=tuple(i.memory_id for i in items if i.use == "covered"),
        saved_tokens=sum(i.tokens for i in items if i.use == "covered"),
    )


def assemble_context(ctx: CallContext, call: sc.AssembleContext) -> ContextPlan:
    cubes = tuple(dict.fromkeys(call.cubes))
    plan, _ = assemble(ctx, call.query, cubes, call.k, token_budget(ctx, call.token_budget), call.filters)
    record_reads(ctx, [i.memory_id for i in plan.used], ctx.kernel.clock.now())
    audit_read(ctx, call.op, cubes[0] if len(cubes) == 1 else None,
               detail=f"{len(plan.used)} of {len(plan.items)} memories, {plan.text_tokens} text tokens")
    return plan


HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {
    sc.Search: search,
    sc.AssembleContext: assemble_context,
}
