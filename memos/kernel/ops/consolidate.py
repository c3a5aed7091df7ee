"""``compress``: a summary memory written by the summariser, derived from its sources at exact versions; ``merge``:
memories that mean the same fused into one (``MergeOp``).

A long operation (``memos.kernel.longops``):
- *plan* (under the kernel): the caller needs ``write`` on the summary's cube and on each source (``read`` with
  ``keep_sources``); every source is active and not an adapter; ``expected_versions``, when given, are current;
- *work* (kernel released): the language model (``memos.models.llm``; the rule-based fallback is extractive)
  summarises the sources' texts; the summary is cut to ``max_bytes`` at a word boundary;
- *commit* (one transaction): a source changed since the plan is refused (``VersionConflict``: the summary would
  not say what its provenance claims); else the summary memory is written (source ``derived``, ``derived_from`` the
  planned versions, operation ``compress:<summariser>``, the policy rule if a policy asked, trust the weakest of the
  sources', tags the given ones or the sources') and the sources are archived (operation ``compress:retired``,
  ``source_refs`` naming the summary) unless ``keep_sources``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memos.errors import InvalidState, InvalidSyscall, ModelUnavailable, VersionConflict
from memos.kernel import events as ev
from memos.kernel.authz import policy_rule, require_cube, require_memory
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation
from memos.kernel.versions import (
    check_expected,
    derived_provenance,
    first_version,
    next_version,
    to_memory,
    weakest,
)
from memos.models.llm import SUMMARY_INSTRUCTION, SUMMARY_SCHEMA
from memos.types import Kind, Memory, MemoryList, MemoryRef, Provenance, Right, Source, State

if TYPE_CHECKING:
    from memos.storage.sqlite import VersionRow


@dataclass
class _CompressPlan:
    cube: str
    sources: list[VersionRow]
    rule: str | None


@dataclass
class _Summary:
    text: str
    by: str


def cut_to_bytes(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` UTF-8 bytes, cut at a word boundary with an ellipsis when it had to be cut."""
    if len(text.encode("utf-8")) <= limit:
        return text
    cut = text.encode("utf-8")[: max(limit - 3, 1)].decode("utf-8", "ignore")
    head = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return head.rstrip(" ,;:") + "…"


class CompressOp(LongOperation):
    """``compress(ids)`` (see the module docstring)."""

    def plan(self, ctx: CallContext, call: Any) -> _CompressPlan:
        if ctx.kernel.llm is None:
            raise ModelUnavailable("compress needs a summariser (a language model); this kernel has none")
        rule = policy_rule(ctx, call)
        needed = Right.READ if call.keep_sources else Right.WRITE
        sources = [require_memory(ctx, i, needed) for i in call.ids]
        for i, row in enumerate(sources):
            if row.state != State.ACTIVE:
                raise InvalidState(f"memory {row.memory_id} is {row.state}; only active memories are compressed",
                                   memory_id=row.memory_id)
            if row.kind == Kind.PARAMETRIC:
                raise InvalidSyscall(f"memory {row.memory_id} is an adapter: its knowledge is in its weights",
                                     memory_id=row.memory_id)
            if call.expected_versions is not None:
                check_expected(row, call.expected_versions[i])
        cube = call.cube or sources[0].cube
        require_cube(ctx, cube, Right.WRITE)
        return _CompressPlan(cube, sources, rule)

    def work(self, ctx: CallContext, call: Any, plan: _CompressPlan, job: Any = None) -> _Summary:
        texts = [row.content for row in plan.sources]
        out = ctx.kernel.llm.extract(SUMMARY_INSTRUCTION, {"texts": texts}, SUMMARY_SCHEMA)  # type: ignore[union-attr]
        text = " ".join(str(out.data["summary"]).split())
        if not text:
            raise InvalidState("the summariser found nothing to keep in these memories")
        return _Summary(cut_to_bytes(text, call.max_bytes), out.by)

    def abort(self, ctx: CallContext, plan: _CompressPlan) -> None:
        """Nothing to undo: planning a compression changes nothing."""

    def commit(self, ctx: CallContext, call: Any, plan: _CompressPlan, out: _Summary) -> Memory:
        kernel = ctx.kernel
        now = kernel.clock.now()
        current = []
        for row in plan.sources:
            latest = kernel.store.get_version(row.memory_id)
            if latest is None or latest.version != row.version or latest.state != State.ACTIVE:
                raise VersionConflict(
                    f"memory {row.memory_id} changed while it was being summarised (was v{row.version})",
                    memory_id=row.memory_id, expected=row.version, current=latest.version if latest else None,
                )
            current.append(latest)
        refs = tuple(MemoryRef(id=r.memory_id, version=r.version) for r in current)
        tags = tuple(dict.fromkeys(call.tags or [t for r in current for t in r.tags]))[:32]
        provenance = Provenance(
            author=ctx.principal, source=Source.DERIVED, derived_from=refs, operation=f"compress:{out.by}",
            policy_rule=plan.rule, trust=weakest(r.provenance.get("trust", "trusted") for r in current),
        )
        memory_id = kernel.new_id()
        row = first_version(
            ctx, memory_id=memory_id, cube=plan.cube, kind="plaintext", provenance=provenance, content=out.text,
            metadata={"summarised": len(current), "summariser": out.by}, tags=tags, at=now,
        )
        if not call.keep_sources:
            for s in current:
                retired = derived_provenance(
                    s, author=ctx.principal, operation="compress:retired", source_refs=(memory_id,),
                    policy_rule=plan.rule,
                )
                next_version(ctx, s, retired, at=now, state=State.ARCHIVED)
        ctx.audit_ok(call.op, plan.cube, memory_id, detail=",".join(call.ids)[:1000])
        ctx.emit(ev.Compressed(
            cube=plan.cube, memory_id=memory_id, principal=ctx.principal, sources=list(call.ids), rule=plan.rule,
            kept=call.keep_sources, summariser=out.by,
        ))
        return to_memory(ctx, row)


# ------------------------------------------------------------------------------------------------------ merge


def group_by_meaning(vectors: list[list[float]], similarity: float, max_group: int) -> list[list[int]]:
    """Star groups: around each member not yet grouped (in order), the later ungrouped ones whose cosine to it is at
    least ``similarity``, at most ``max_group`` in all. A chain a~b~c never merges a with an unrelated c. Groups of
    one are left out."""
    norms = [sum(x * x for x in v) ** 0.5 or 1.0 for v in vectors]
    unit = [[x / n for x in v] for v, n in zip(vectors, norms, strict=True)]
    taken: set[int] = set()
    groups = []
    for i in range(len(unit)):
        if i in taken:
            continue
        group = [i]
        for j in range(i + 1, len(unit)):
            if len(group) == max_group:
                break
            if j not in taken and sum(a * b for a, b in zip(unit[i], unit[j], strict=True)) >= similarity:
                group.append(j)
        if len(group) > 1:
            taken.update(group)
            groups.append(group)
    return groups


@dataclass
class _MergePlan:
    sources: list[VersionRow]
    rule: str | None


class MergeOp(LongOperation):
    """``merge(ids)``: fuse the memories that mean the same (``memos.syscalls.Merge``).

    *plan*: write on each memory (read with ``keep_sources``), each active and not an adapter, at the expected
    versions; *work*: embed the texts, group them (``group_by_meaning``), the summariser writes each group's text;
    *commit*: a member changed since the plan is a ``VersionConflict``; each group becomes a memory (source
    ``derived``, operation ``merge:<summariser>``, ``metadata.merged`` its size and the similarity) and its members
    are archived (operation ``merge:retired``) unless kept. The result lists the new memories (none when nothing
    was similar enough)."""

    def plan(self, ctx: CallContext, call: Any) -> _MergePlan:
        if ctx.kernel.llm is None:
            raise ModelUnavailable("merge needs a summariser (a language model); this kernel has none")
        rule = policy_rule(ctx, call)
        needed = Right.READ if call.keep_sources else Right.WRITE
        sources = [require_memory(ctx, i, needed) for i in call.ids]
        for i, row in enumerate(sources):
            if row.state != State.ACTIVE or row.kind == Kind.PARAMETRIC:
                raise InvalidState(f"memory {row.memory_id} is a {row.state} {row.kind} memory; merge takes active "
                                   "plaintext or activation memories", memory_id=row.memory_id)
            if call.expected_versions is not None:
                check_expected(row, call.expected_versions[i])
            require_cube(ctx, row.cube, Right.WRITE)
        return _MergePlan(sources, rule)

    def work(self, ctx: CallContext, call: Any, plan: _MergePlan, job: Any = None) -> list[tuple[list[int], _Summary]]:
        by_cube: dict[str, list[int]] = {}
        for i, row in enumerate(plan.sources):
            by_cube.setdefault(row.cube, []).append(i)
        vectors = ctx.kernel.embedder.embed([row.content for row in plan.sources])
        out = []
        for members in by_cube.values():
            for group in group_by_meaning([vectors[i] for i in members], call.similarity, call.max_group):
                chosen = [members[g] for g in group]
                texts = [plan.sources[i].content for i in chosen]
                summary = ctx.kernel.llm.extract(SUMMARY_INSTRUCTION, {"texts": texts}, SUMMARY_SCHEMA)  # type: ignore[union-attr]
                text = " ".join(str(summary.data["summary"]).split()) or texts[0]
                out.append((chosen, _Summary(cut_to_bytes(text, call.max_bytes), summary.by)))
        return out

    def abort(self, ctx: CallContext, plan: _MergePlan) -> None:
        """Nothing to undo: planning a merge changes nothing."""

    def commit(self, ctx: CallContext, call: Any, plan: _MergePlan, out: list[tuple[list[int], _Summary]]) -> MemoryList:
        kernel = ctx.kernel
        now = kernel.clock.now()
        for row in plan.sources:
            latest = kernel.store.get_version(row.memory_id)
            if latest is None or latest.version != row.version or latest.state != State.ACTIVE:
                raise VersionConflict(f"memory {row.memory_id} changed while it was being merged (was v{row.version})",
                                      memory_id=row.memory_id, expected=row.version)
        written = []
        for members, summary in out:
            group = [plan.sources[i] for i in members]
            memory_id = kernel.new_id()
            provenance = Provenance(
                author=ctx.principal, source=Source.DERIVED, operation=f"merge:{summary.by}", policy_rule=plan.rule,
                derived_from=tuple(MemoryRef(id=r.memory_id, version=r.version) for r in group),
                trust=weakest(r.provenance.get("trust", "trusted") for r in group),
            )
            tags = tuple(dict.fromkeys(t for r in group for t in r.tags))[:32]
            row = first_version(
                ctx, memory_id=memory_id, cube=group[0].cube, kind="plaintext", provenance=provenance,
                content=summary.text, metadata={"merged": len(group), "similarity": call.similarity}, tags=tags, at=now,
            )
            if not call.keep_sources:
                for s in group:
                    retired = derived_provenance(s, author=ctx.principal, operation="merge:retired",
                                                 source_refs=(memory_id,), policy_rule=plan.rule)
                    next_version(ctx, s, retired, at=now, state=State.ARCHIVED)
            ctx.emit(ev.Fused(cube=group[0].cube, memory_id=memory_id, principal=ctx.principal,
                              sources=[r.memory_id for r in group], rule=plan.rule, by="meaning"))
            written.append(to_memory(ctx, row))
        ctx.audit_ok(call.op, plan.sources[0].cube, detail=f"{len(written)} groups of {len(call.ids)} memories")
        return MemoryList(memories=tuple(written))
