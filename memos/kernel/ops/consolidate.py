"""``compress``: a summary memory written by the summariser, derived from its sources at exact versions.

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
from memos.types import Kind, Memory, MemoryRef, Provenance, Right, Source, State

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
        ctx.emit("compressed", plan.cube, memory_id, ctx.principal, sources=list(call.ids), rule=plan.rule,
                 kept=call.keep_sources, summariser=out.by)
        return to_memory(ctx, row)
