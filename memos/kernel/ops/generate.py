"""``generate(messages, cubes | memory, ...)``: running the model with the memory a request gets.

A long operation (``memos.kernel.longops``): *plan* (``assemble_context`` for the last user message, or the given
memories, under the kernel), *work* (the model host injects the kv memories as the prompt prefix, then the text
memories as memory blocks, then the messages; the kernel is free meanwhile), *commit* (reads are counted for the
memories used; ``activation_used`` events say whether each cache came from RAM or disk, ``evicted`` events report
RAM-tier evictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memos.errors import FingerprintMismatch, InvalidState, InvalidSyscall
from memos.kernel import events as ev
from memos.kernel.authz import require_memory
from memos.kernel.context import CallContext
from memos.kernel.longops import LongOperation, require_model
from memos.kernel.ops.groups import prefer_groups
from memos.kernel.ops.search import assemble, context_plan, plan_items, token_budget, usable_adapter
from memos.kernel.reads import record_reads
from memos.models.port import Generation, KVBlock
from memos.storage.sqlite import VersionRow
from memos.syscalls import SearchFilters
from memos.types import ContextPlan, GenerateResult, Kind, Right, State


@dataclass
class GeneratePlan:
    context: ContextPlan | None
    rows: dict[str, VersionRow]
    kv: list[KVBlock]
    texts: list[str]
    adapter: KVBlock | None = None


class GenerateOp(LongOperation):
    def plan(self, ctx: CallContext, call: Any) -> GeneratePlan:
        require_model(ctx, "generate")
        if call.memory and call.cubes:
            raise InvalidSyscall("give either cubes (memory chosen by assemble_context) or memory (exact ids), not both")
        context, rows = None, {}
        if call.memory:
            chosen = [require_memory(ctx, m, Right.READ) for m in dict.fromkeys(call.memory)]
            for row in chosen:
                if row.state != State.ACTIVE:
                    raise InvalidSyscall(f"memory {row.memory_id} is {row.state}; only active memory is injected")
            budget = token_budget(ctx, call.token_budget)
            items, estimated = plan_items(ctx, [(r, 1.0, "requested") for r in chosen], budget)
            left_out = [i for i in items if i.use == "skip" and i.kind != Kind.PARAMETRIC]
            for item in left_out:
                ctx.kernel.log.warning("named_memory_skipped", principal=ctx.principal, memory_id=item.memory_id,
                                       tokens=item.tokens, token_budget=budget)
            warnings = tuple(
                f"memory {i.memory_id} was named but left out: its {i.tokens} tokens do not fit in token_budget="
                f"{budget} after the memories before it; raise token_budget or name fewer memories" for i in left_out
            )
            # A group cache of consecutive named memories replaces their prefill (the prompt stays the same).
            items, groups = prefer_groups(ctx, items, tuple(dict.fromkeys(r.cube for r in chosen)), ordered=True)
            context = context_plan("", budget, items, estimated, warnings)
            rows = {r.memory_id: r for r in chosen} | groups
        elif call.cubes:
            users = [m.content for m in call.messages if m.role == "user"]
            if not users:
                raise InvalidSyscall("generate with cubes needs a user message to choose memory for")
            context, rows = assemble(ctx, users[-1][:4096], tuple(dict.fromkeys(call.cubes)), call.k,
                                     token_budget(ctx, call.token_budget), SearchFilters())
        adapter = None
        if call.adapter is not None:
            row = require_memory(ctx, call.adapter, Right.READ)
            why = usable_adapter(ctx, row, allow_stale=call.allow_stale, allow_unadopted=True)
            if why is not None and "another base model" in why:
                raise FingerprintMismatch(f"memory {row.memory_id} cannot be applied: {why}", memory_id=row.memory_id)
            if why is not None:
                raise InvalidState(f"memory {row.memory_id} cannot be applied: {why}", memory_id=row.memory_id)
            adapter = KVBlock(memory_id=row.memory_id, payload=row.payload)
            rows[row.memory_id] = row
        elif context is not None and context.adapter is not None:
            adapter = KVBlock(memory_id=context.adapter, payload=rows[context.adapter].payload)
        kv, texts = [], []
        for item in context.used if context else ():
            row = rows[item.memory_id]
            if item.use == "kv" and adapter is None:
                kv.append(KVBlock(memory_id=row.memory_id, payload=row.payload))
            elif item.use in ("kv", "text") or (item.use == "covered" and adapter.memory_id != context.adapter):
                texts.append(row.content)  # a covered source goes in as text when another adapter was named
        return GeneratePlan(context, rows, kv, texts, adapter)

    def work(self, ctx: CallContext, call: Any, plan: GeneratePlan, job: Any = None) -> Generation:
        messages = [{"role": m.role, "content": m.content} for m in call.messages]
        return ctx.kernel.model.generate(  # type: ignore[union-attr]
            messages, kv=plan.kv, texts=plan.texts, max_new_tokens=call.max_new_tokens, adapter=plan.adapter
        )

    def abort(self, ctx: CallContext, plan: GeneratePlan) -> None:
        """Nothing to undo: planning a generation changes nothing."""

    def commit(self, ctx: CallContext, call: Any, plan: GeneratePlan, out: Generation) -> GenerateResult:
        store = ctx.kernel.store
        now = ctx.kernel.clock.now()
        used = [i.memory_id for i in plan.context.used] if plan.context else []
        from_disk = set(out.kv_loaded_from_disk)
        for block in plan.kv:
            row = plan.rows[block.memory_id]
            ctx.emit(ev.ActivationUsed(
                cube=row.cube, memory_id=row.memory_id, principal=ctx.principal,
                tier="disk" if block.memory_id in from_disk else "ram",
            ))
        if plan.adapter is not None:
            row = plan.rows[plan.adapter.memory_id]
            ctx.emit(ev.AdapterUsed(cube=row.cube, memory_id=row.memory_id, principal=ctx.principal, stale=row.stale))
            used.append(row.memory_id)
        for memory_id in out.ram_evicted:
            cube = store.memory_cube(memory_id)
            ctx.emit(ev.Evicted(
                cube=cube, memory_id=memory_id, principal="system", tier="ram", reason="model host RAM budget",
            ))
        record_reads(ctx, list(dict.fromkeys(used)), now)
        cube = next(iter(call.cubes), None) if call.cubes else None
        ctx.audit_ok(call.op, cube, detail=f"{len(plan.kv)} kv, {len(plan.texts)} text memories, "
                     f"{out.prompt_tokens} prompt tokens ({out.cached_tokens} cached)")
        return GenerateResult(
            text=out.text, finish_reason=out.finish_reason, plan=plan.context, prompt_tokens=out.prompt_tokens,
            cached_tokens=out.cached_tokens, ttft_s=out.ttft_s, total_s=out.total_s,
        )
