"""``ingest``: memories extracted from conversation messages (a MemReader), and ``related``: what links a memory.

``ingest`` is a long operation (``Kernel._run_long``):
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
from memos.kernel.memreader import Decision, Fact, Known, decide
from memos.kernel.retrieval import Fused
from memos.models.llm import FACTS_INSTRUCTION, FACTS_SCHEMA
from memos.syscalls import SearchFilters
from memos.types import (
    IngestDecision,
    IngestResult,
    MemoryRef,
    Provenance,
    RelatedList,
    RelatedMemory,
    Right,
    State,
    Trust,
    initial_trust,
)

#: A memory brought into search results by link expansion scores this fraction of the hit that brought it.
EXPAND_DECAY = 0.9

if TYPE_CHECKING:
    from memos.kernel.core import Kernel
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


class IngestOps:
    """Kernel mixin: ``ingest`` (long operation) and ``related``."""

    # ------------------------------------------------------------------------------------------------ ingest

    @staticmethod
    def _turns(call: Any) -> list[dict[str, Any]]:
        return [
            {"id": m.id or f"msg:{i}", "speaker": m.speaker or m.role, "content": m.content,
             "at": m.at.isoformat() if m.at else None, "session": m.session}
            for i, m in enumerate(call.messages)
        ]

    def _plan_ingest(self: Kernel, principal: str, call: Any) -> _IngestPlan:
        self._require_cube(principal, call.cube, Right.WRITE)
        if self.llm is None:
            raise ModelUnavailable("ingest needs a language model; this kernel has none (open it with open_kernel, "
                                   "which uses MEMOS_LLM, rules by default)")
        ids = [t["id"] for t in self._turns(call)]
        if len(set(ids)) != len(ids):
            raise InvalidSyscall("ingest needs distinct message ids")
        return _IngestPlan(call.cube, initial_trust(call.source, call.trust))

    def _work_ingest(self: Kernel, call: Any, plan: _IngestPlan, job: Any = None) -> _Extraction:
        extracted = self.llm.extract(FACTS_INSTRUCTION, {"turns": self._turns(call)}, FACTS_SCHEMA)  # type: ignore[union-attr]
        known_ids = {t["id"] for t in self._turns(call)}
        facts = []
        for item in extracted.data["facts"]:
            fact = Fact.from_extracted(item)
            # A model may cite messages that were not given: such refs are dropped, never stored as provenance.
            fact = Fact(**{**fact.__dict__, "refs": tuple(r for r in fact.refs if r in known_ids)})
            if fact.text:
                facts.append(fact)
        vectors = self.embedder.embed([f.text for f in facts]) if facts else []
        return _Extraction(extracted.by, facts, vectors)

    def _abort_ingest(self: Kernel, principal: str, plan: _IngestPlan) -> None:
        """Nothing to undo: planning an ingest changes nothing."""

    def _neighbours(self: Kernel, principal: str, cube: str, fact: Fact, vector: list[float], k: int) -> list[VersionRow]:
        rows: dict[str, VersionRow] = {}
        if fact.key is not None:
            for row in self.store.current_with_fact(cube, fact.key[0], fact.key[1]):
                rows[row.memory_id] = row
        self._tls.query_vectors = {fact.text: vector}
        for row, _ in self._search_hits(principal, fact.text, (cube,), k, SearchFilters()):
            rows.setdefault(row.memory_id, row)
        return list(rows.values())

    def _commit_ingest(self: Kernel, principal: str, call: Any, plan: _IngestPlan, out: _Extraction) -> IngestResult:
        from memos.kernel.core import weakest

        self._require_cube(principal, call.cube, Right.WRITE)  # rights may have changed while the model worked
        sessions = {t["id"]: t["session"] for t in self._turns(call)}
        decisions = []
        for fact, vector in zip(out.facts, out.vectors, strict=True):
            rows = self._neighbours(principal, call.cube, fact, vector, call.neighbours)
            by_id = {r.memory_id: r for r in rows}
            decision = decide(fact, [Known(r.memory_id, r.version, r.content, r.metadata) for r in rows])
            target = by_id[decision.target.memory_id] if decision.target else None
            memory = None
            if not call.dry_run:
                memory = self._apply_decision(principal, call, plan, out.by, decision, target, sessions, weakest)
            decisions.append(IngestDecision(
                action=decision.action, text=fact.text, reason=decision.reason, source_refs=fact.refs,
                memory=memory, target=MemoryRef(id=target.memory_id, version=target.version) if target else None,
            ))
        result = IngestResult(extractor=out.by, decisions=tuple(decisions), dry_run=call.dry_run)
        counts = result.counts()
        self._audit_ok(principal, call.op, call.cube, detail=f"{len(call.messages)} messages by {out.by}: "
                       + ", ".join(f"{n} {a}" for a, n in counts.items()) + (" (dry run)" if call.dry_run else ""))
        if not call.dry_run:
            self._emit("ingested", call.cube, None, principal, extractor=out.by, messages=len(call.messages), **counts)
        return result

    def _apply_decision(
        self: Kernel, principal: str, call: Any, plan: _IngestPlan, by: str, decision: Decision,
        target: VersionRow | None, sessions: dict[str, str | None], weakest: Any,
    ) -> MemoryRef | None:
        fact, now = decision.fact, self.clock.now()
        metadata: dict[str, Any] = {**fact.metadata(), "extractor": by}
        session = next((sessions[r] for r in fact.refs if sessions.get(r)), None)
        if session:
            metadata["session"] = session
        if decision.action == "noop":
            return None
        if decision.action == "update":
            assert target is not None
            refs = tuple(dict.fromkeys([*target.provenance.get("source_refs", ()), *fact.refs]))[-64:]
            provenance = Provenance.model_validate(target.provenance).model_copy(update={
                "author": principal, "source_refs": refs, "operation": f"ingest:{by}:update", "policy_rule": None,
                "trust": weakest([plan.trust, target.provenance.get("trust", "trusted")]),
            })
            new = self._append(
                target, memory_id=target.memory_id, cube=target.cube, kind=target.kind, state=target.state,
                content=fact.text, metadata={**target.metadata, **metadata}, tags=target.tags, provenance=provenance,
                now=now, fingerprint=target.fingerprint, payload=target.payload,
            )
            self._emit("updated", target.cube, target.memory_id, principal, version=new.version, operation="ingest")
            return MemoryRef(id=new.memory_id, version=new.version)
        if decision.action == "invalidate":
            assert target is not None
            metadata["supersedes"] = target.memory_id
        memory_id = self.new_id()
        provenance = Provenance(author=principal, source=call.source, source_refs=fact.refs,
                                operation=f"ingest:{by}", trust=weakest([plan.trust]))
        self.store.insert_memory(memory_id, call.cube, "plaintext", State.ACTIVE.value, now)
        row = self._append(
            None, memory_id=memory_id, cube=call.cube, kind="plaintext", state=State.ACTIVE, content=fact.text,
            metadata=metadata, tags=tuple(dict.fromkeys(call.tags)), provenance=provenance, now=now,
        )
        self._emit("written", call.cube, memory_id, principal, version=1, trust=provenance.trust.value,
                   operation=provenance.operation)
        if decision.action == "invalidate":
            assert target is not None
            retired = Provenance.model_validate(target.provenance).model_copy(update={
                "author": principal, "source_refs": fact.refs, "operation": f"ingest:{by}:invalidate",
                "policy_rule": None,
            })
            old = self._append(
                target, memory_id=target.memory_id, cube=target.cube, kind=target.kind, state=State.ARCHIVED,
                content=target.content, metadata={**target.metadata, "valid_until": fact.at or _iso(now),
                                                  "superseded_by": memory_id},
                tags=target.tags, provenance=retired, now=now, fingerprint=target.fingerprint, payload=target.payload,
            )
            self.store.add_link(memory_id, target.memory_id, "supersedes", principal, now)
            self._emit("superseded", target.cube, target.memory_id, principal, version=old.version, by=memory_id)
        return MemoryRef(id=row.memory_id, version=row.version)

    # ------------------------------------------------------------------------------------------------ related

    def _related_rows(self: Kernel, principal: str, row: VersionRow) -> list[tuple[VersionRow, str, str]]:
        """(memory, relation, direction) for every memory linked to ``row``, strongest relations first."""
        found: list[tuple[str, str, str]] = []
        for source, target, relation, _, _ in self.store.links_of(row.memory_id):
            found.append((target, relation, "out") if source == row.memory_id else (source, relation, "in"))
        for ref in row.provenance.get("derived_from", ()):
            found.append((ref["id"], "derived_from", "out"))
        for child, _ in self.store.children_of(row.memory_id):
            if child != row.memory_id:
                found.append((child, "derived", "in"))
        for other in self.store.session_neighbours(row):
            found.append((other.memory_id, "same_session", "both"))
        for other in self.store.same_subject(row):
            found.append((other.memory_id, "same_subject", "both"))
        out: list[tuple[VersionRow, str, str]] = []
        seen = {row.memory_id}
        for memory_id, relation, direction in found:
            if memory_id in seen:
                continue
            other = self.store.get_version(memory_id)
            if other is None or not self._may_read(principal, other.cube):
                continue
            seen.add(memory_id)
            out.append((other, relation, direction))
        return out

    def _expand_hits(
        self: Kernel, principal: str, hits: list[tuple[VersionRow, Fused]], cubes: tuple[str, ...],
        filters: SearchFilters, k: int, per_hit: int,
    ) -> tuple[list[tuple[VersionRow, Fused]], dict[int, str]]:
        """Hits plus up to ``per_hit`` linked memories of each (in the searched cubes, passing the filters), each
        scored ``EXPAND_DECAY`` times the hit that brought it; best ``k``. Returns them and, by row id, how each
        added one is linked."""
        present = {row.memory_id for row, _ in hits}
        added: list[tuple[VersionRow, Fused]] = []
        via: dict[int, str] = {}
        for row, item in hits:
            taken = 0
            for other, relation, _ in self._related_rows(principal, row):
                if taken == per_hit:
                    break
                if other.memory_id in present or other.cube not in cubes or not self._passes(other, filters):
                    continue
                present.add(other.memory_id)
                taken += 1
                added.append((other, Fused(other.rowid, item.score * EXPAND_DECAY, None, None)))
                via[other.rowid] = f"{relation} of {row.memory_id}"
        merged = sorted([*hits, *added], key=lambda h: -h[1].score)[:k]
        return merged, via

    def _may_read(self: Kernel, principal: str, cube: str) -> bool:
        from memos.kernel.acl import allows

        return allows(self._right(principal, cube), Right.READ)

    def _op_related(self: Kernel, principal: str, call: Any) -> RelatedList:
        row = self._require_memory(principal, call.id, Right.READ)
        items = [
            RelatedMemory(memory=self.to_memory(other), relation=relation, direction=direction)  # type: ignore[arg-type]
            for other, relation, direction in self._related_rows(principal, row)
            if (call.include_inactive or other.state == State.ACTIVE) and (not call.relations or relation in call.relations)
        ][: call.k]
        self._audit_ok(principal, call.op, row.cube, row.memory_id, detail=f"{len(items)} related")
        return RelatedList(related=tuple(items))


def _iso(epoch: float) -> str:
    from memos.types import from_epoch

    return from_epoch(epoch).isoformat()
