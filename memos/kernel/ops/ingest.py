"""``ingest``: memories extracted from conversation messages (a MemReader).

``ingest`` is a long operation (``memos.kernel.longops``):
- *plan* (under the kernel): the caller needs ``write`` on the cube; a language model must be configured;
- *work* (kernel released): the language model (``memos.models.llm``, given to the kernel by the composition root)
  extracts facts from the messages; their texts are embedded in one batch;
- *commit* (one transaction): each fact, in order, is compared with the nearest current memories of the cube (hybrid
  search with the fact as query, plus the memories stating the same single-valued property) and decided by
  ``memos.kernel.memreader.decide``; the decision is applied at once, so later facts of the same call see it.

What a decision writes:
- **add**: a new memory; ``source`` as given, ``source_refs`` the ids of the messages it came from, operation
  ``ingest:<extractor>``, trust the input's (``trust``, or by source as for ``write``); metadata ``speaker``, ``at``,
  ``session``, ``subject``/``attribute``/``value`` when known, and ``extractor``;
- **update**: a new version of the target with the fact's text; its ``source_refs`` join the target's; operation
  ``ingest:<extractor>:update``; trust the weakest of the target's and the input's;
- **invalidate**: the new fact is added (as above, metadata ``supersedes``) and the target gets a new version in
  state ``archived`` with ``valid_until`` (when the contradicting message was said, else now) and
  ``superseded_by``; a ``supersedes`` link joins them. Search (current, active memories) finds only the new fact;
  ``search(as_of=...)`` before the ingest still finds the old one, as it was then;
- **noop**: nothing.
``dry_run`` decides every fact against the cube as it is and writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memos.errors import InvalidSyscall, ModelUnavailable
from memos.kernel import events as ev
from memos.kernel.authz import require_cube
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation
from memos.kernel.memreader import Decision, Fact, Known, decide
from memos.kernel.ops.search import search_hits
from memos.kernel.versions import derived_provenance, first_version, next_version, weakest
from memos.models.llm import FACTS_INSTRUCTION, FACTS_SCHEMA
from memos.syscalls import SearchFilters
from memos.types import (
    IngestDecision,
    IngestResult,
    MemoryRef,
    Provenance,
    Right,
    State,
    Trust,
    from_epoch,
    initial_trust,
)

if TYPE_CHECKING:
    from memos.storage.sqlite import VersionRow


@dataclass
class _IngestPlan:
    cube: str
    trust: Trust


@dataclass
class _Extraction:
    by: str
    facts: list[Fact]
    vectors: list[list[float]]


def _turns(call: Any) -> list[dict[str, Any]]:
    return [
        {"id": m.id or f"msg:{i}", "speaker": m.speaker or m.role, "content": m.content,
         "at": m.at.isoformat() if m.at else None, "session": m.session}
        for i, m in enumerate(call.messages)
    ]


class IngestOp(LongOperation):
    """``ingest(messages, cube)`` (see the module docstring)."""

    def plan(self, ctx: CallContext, call: Any) -> _IngestPlan:
        require_cube(ctx, call.cube, Right.WRITE)
        if ctx.kernel.llm is None:
            raise ModelUnavailable("ingest needs a language model; this kernel has none (open it with open_kernel, "
                                   "which uses MEMOS_LLM, rules by default)")
        ids = [t["id"] for t in _turns(call)]
        if len(set(ids)) != len(ids):
            raise InvalidSyscall("ingest needs distinct message ids")
        return _IngestPlan(call.cube, initial_trust(call.source, call.trust))

    def work(self, ctx: CallContext, call: Any, plan: _IngestPlan, job: Any = None) -> _Extraction:
        kernel = ctx.kernel
        extracted = kernel.llm.extract(FACTS_INSTRUCTION, {"turns": _turns(call)}, FACTS_SCHEMA)  # type: ignore[union-attr]
        known_ids = {t["id"] for t in _turns(call)}
        facts = []
        for item in extracted.data["facts"]:
            fact = Fact.from_extracted(item)
            # A model may cite messages that were not given: such refs are dropped, never stored as provenance.
            fact = Fact(**{**fact.__dict__, "refs": tuple(r for r in fact.refs if r in known_ids)})
            if fact.text:
                facts.append(fact)
        vectors = kernel.embedder.embed([f.text for f in facts]) if facts else []
        return _Extraction(extracted.by, facts, vectors)

    def abort(self, ctx: CallContext, plan: _IngestPlan) -> None:
        """Nothing to undo: planning an ingest changes nothing."""

    def commit(self, ctx: CallContext, call: Any, plan: _IngestPlan, out: _Extraction) -> IngestResult:
        require_cube(ctx, call.cube, Right.WRITE)  # rights may have changed while the model worked
        sessions = {t["id"]: t["session"] for t in _turns(call)}
        decisions = []
        for fact, vector in zip(out.facts, out.vectors, strict=True):
            rows = _neighbours(ctx, call.cube, fact, vector, call.neighbours)
            by_id = {r.memory_id: r for r in rows}
            decision = decide(fact, [Known(r.memory_id, r.version, r.content, r.metadata) for r in rows])
            target = by_id[decision.target.memory_id] if decision.target else None
            memory = None
            if not call.dry_run:
                memory = _apply_decision(ctx, call, plan, out.by, decision, target, sessions)
            decisions.append(IngestDecision(
                action=decision.action, text=fact.text, reason=decision.reason, source_refs=fact.refs,
                memory=memory, target=MemoryRef(id=target.memory_id, version=target.version) if target else None,
            ))
        result = IngestResult(extractor=out.by, decisions=tuple(decisions), dry_run=call.dry_run)
        counts = result.counts()
        ctx.audit_ok(call.op, call.cube, detail=f"{len(call.messages)} messages by {out.by}: "
                     + ", ".join(f"{n} {a}" for a, n in counts.items()) + (" (dry run)" if call.dry_run else ""))
        if not call.dry_run:
            ctx.emit(ev.Ingested(
                cube=call.cube, principal=ctx.principal, extractor=out.by, messages=len(call.messages), **counts,
            ))
        return result


def _neighbours(ctx: CallContext, cube: str, fact: Fact, vector: list[float], k: int) -> list[VersionRow]:
    rows: dict[str, VersionRow] = {}
    if fact.key is not None:
        for row in ctx.kernel.store.current_with_fact(cube, fact.key[0], fact.key[1]):
            rows[row.memory_id] = row
    ctx.query_vectors = {fact.text: vector}
    for row, _ in search_hits(ctx, fact.text, (cube,), k, SearchFilters()):
        rows.setdefault(row.memory_id, row)
    return list(rows.values())


def _apply_decision(
    ctx: CallContext, call: Any, plan: _IngestPlan, by: str, decision: Decision, target: VersionRow | None,
    sessions: dict[str, str | None],
) -> MemoryRef | None:
    kernel, principal = ctx.kernel, ctx.principal
    fact, now = decision.fact, kernel.clock.now()
    metadata: dict[str, Any] = {**fact.metadata(), "extractor": by}
    session = next((sessions[r] for r in fact.refs if sessions.get(r)), None)
    if session:
        metadata["session"] = session
    if decision.action == "noop":
        return None
    if decision.action == "update":
        assert target is not None
        refs = tuple(dict.fromkeys([*target.provenance.get("source_refs", ()), *fact.refs]))[-64:]
        provenance = derived_provenance(
            target, author=principal, source_refs=refs, operation=f"ingest:{by}:update", policy_rule=None,
            trust=weakest([plan.trust, target.provenance.get("trust", "trusted")]),
        )
        new = next_version(ctx, target, provenance, at=now, content=fact.text, metadata={**target.metadata, **metadata})
        ctx.emit(ev.Updated(
            cube=target.cube, memory_id=target.memory_id, principal=principal, version=new.version,
            operation="ingest",
        ))
        return MemoryRef(id=new.memory_id, version=new.version)
    if decision.action == "invalidate":
        assert target is not None
        metadata["supersedes"] = target.memory_id
    memory_id = kernel.new_id()
    provenance = Provenance(author=principal, source=call.source, source_refs=fact.refs,
                            operation=f"ingest:{by}", trust=weakest([plan.trust]))
    row = first_version(
        ctx, memory_id=memory_id, cube=call.cube, kind="plaintext", provenance=provenance, content=fact.text,
        metadata=metadata, tags=tuple(dict.fromkeys(call.tags)), at=now,
    )
    ctx.emit(ev.Written(
        cube=call.cube, memory_id=memory_id, principal=principal, version=1, trust=provenance.trust.value,
        operation=provenance.operation,
    ))
    if decision.action == "invalidate":
        assert target is not None
        retired = derived_provenance(
            target, author=principal, source_refs=fact.refs, operation=f"ingest:{by}:invalidate", policy_rule=None,
        )
        old = next_version(
            ctx, target, retired, at=now, state=State.ARCHIVED,
            metadata={**target.metadata, "valid_until": fact.at or from_epoch(now).isoformat(), "superseded_by": memory_id},
        )
        kernel.store.add_link(memory_id, target.memory_id, "supersedes", principal, now)
        ctx.emit(ev.Superseded(
            cube=target.cube, memory_id=target.memory_id, principal=principal, version=old.version, by=memory_id,
        ))
    return MemoryRef(id=row.memory_id, version=row.version)
