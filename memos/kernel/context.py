"""Request-time scheduling: which memory a request gets (``assemble_context``) and running the model with it
(``generate``).

``assemble_context(query, cubes, token_budget, k)``:
1. hybrid search for ``query`` (the caller needs read on every cube), best ``k`` first;
2. each hit is *kv* if it is an activation memory whose payload was built for the loaded model and is not stale
   (its tokens are cached: no prefill), else *text* (its tokens are prefilled);
3. hits are taken in score order; at equal relevance (scores within 1e-9) the cheaper one (kv) comes first;
4. a text hit that does not fit the remaining ``token_budget`` is skipped, with the reason; kv hits use no budget
   but their cached tokens are capped by the model's context (``MAX_CACHED_TOKENS``).
Every decision carries a reason. Token counts come from the model host's tokenizer, or are estimated
(characters / 4, ``estimated=True``) when no model host is configured.

``generate(messages, cubes | memory, ...)`` is a long operation: *plan* (assemble_context for the last user
message, or the given memories, under the kernel), *work* (the model host injects the kv memories as the prompt
prefix, then the text memories as memory blocks, then the messages; the kernel is free meanwhile), *commit*
(reads are counted for the memories used; ``activation_used`` events say whether each cache came from RAM or
disk, ``evicted`` events report RAM-tier evictions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memos.errors import FingerprintMismatch, InvalidState, InvalidSyscall
from memos.models.port import Generation, KVBlock
from memos.syscalls import SearchFilters
from memos.types import ContextItem, ContextPlan, GenerateResult, Kind, Right, State

if TYPE_CHECKING:
    from memos.kernel.core import Kernel
    from memos.storage.sqlite import VersionRow

MAX_CACHED_TOKENS = 8192
_TIE = 1e-9


@dataclass
class _GeneratePlan:
    context: ContextPlan | None
    rows: dict[str, VersionRow]
    kv: list[KVBlock]
    texts: list[str]
    adapter: KVBlock | None = None


class ContextOps:
    """Kernel mixin: ``assemble_context`` and ``generate``."""

    def _usable_kv(self: Kernel, row: VersionRow) -> str | None:
        """None if the row's activation payload can be injected, else why not."""
        if row.kind != Kind.ACTIVATION or row.payload is None:
            return "plaintext memory"
        if row.stale:
            return "activation cache is stale (a source changed)"
        if self.model is None:
            return "no model host to inject the cache"
        if row.fingerprint != self.model.fingerprint().model_dump():
            return "activation cache was built for another model"
        return None

    def _usable_adapter(self: Kernel, row: VersionRow, *, allow_stale: bool = False) -> str | None:
        """None if the row's adapter can be applied, else why not."""
        if row.kind != Kind.PARAMETRIC or row.payload is None:
            return "not an adapter"
        if row.state != State.ACTIVE:
            return f"adapter is {row.state}"
        if row.stale and not allow_stale:
            return "adapter is stale (a source changed since it was trained)"
        if self.model is None:
            return "no model host to apply the adapter"
        if row.fingerprint != self.model.fingerprint().model_dump():
            return "adapter was trained on another base model"
        return None

    def _plan_items(
        self: Kernel, candidates: list[tuple[VersionRow, float, str]], token_budget: int
    ) -> tuple[list[ContextItem], bool]:
        """Decide kv / text / skip for (row, score, why-found) candidates, best first."""
        texts = [row.content for row, _, _ in candidates]
        if self.model is not None and texts:
            counts, estimated = self.model.count_tokens(texts), False
        else:
            counts, estimated = [len(t) // 4 + 8 for t in texts], True
        options = []
        for (row, score, found), tokens in zip(candidates, counts, strict=True):
            unusable = self._usable_kv(row)
            options.append((row, score, found, tokens, unusable))
        # Best first; at equal relevance the cheaper (an injectable cache) first.
        options.sort(key=lambda o: (-round(o[1] / _TIE) * _TIE, o[4] is not None))
        items: list[ContextItem] = []
        left, cached = token_budget, 0
        # The best usable adapter among the candidates is applied; under it, KV caches are not valid (they were
        # computed without it), so activation memories go in as text.
        adapter = next((o[0].memory_id for o in options if self._usable_adapter(o[0]) is None), None)
        for row, score, found, tokens, unusable in options:
            common = {"memory_id": row.memory_id, "version": row.version, "kind": row.kind, "score": score}
            if row.kind == Kind.PARAMETRIC:
                why = self._usable_adapter(row)
                if row.memory_id == adapter:
                    items.append(ContextItem(**common, use="adapter", tokens=0,
                                             reason=f"{found}; adapter trained on its sources: no prompt tokens"))
                else:
                    items.append(ContextItem(**common, use="skip", tokens=tokens,
                                             reason=f"{found}; {why or 'another adapter is applied'}"))
                continue
            if adapter is not None and unusable is None:
                unusable = "activation cache not valid under an adapter"
            if unusable is None and cached + tokens <= MAX_CACHED_TOKENS:
                cached += tokens
                items.append(ContextItem(**common, use="kv", tokens=0, cached_tokens=tokens,
                                         reason=f"{found}; activation cache for the loaded model: {tokens} tokens, no prefill"))
            elif tokens <= left:
                left -= tokens
                why = unusable if unusable != "plaintext memory" else "plaintext"
                items.append(ContextItem(**common, use="text", tokens=tokens,
                                         reason=f"{found}; {why}: {tokens} prompt tokens"))
            else:
                items.append(ContextItem(**common, use="skip", tokens=tokens,
                                         reason=f"{found}; {tokens} tokens exceed the {left} left of the budget"))
        return items, estimated

    def _assemble(self: Kernel, principal: str, query: str, cubes: tuple[str, ...], k: int, token_budget: int,
                  filters: SearchFilters) -> tuple[ContextPlan, dict[str, VersionRow]]:
        hits = self._search_hits(principal, query, cubes, k, filters)
        candidates = []
        for rank, (row, item) in enumerate(hits, 1):
            ranks = ", ".join(x for x in (
                f"dense {item.dense_rank}" if item.dense_rank else "", f"lexical {item.lexical_rank}" if item.lexical_rank else ""
            ) if x)
            candidates.append((row, item.score, f"search rank {rank} ({ranks})"))
        items, estimated = self._plan_items(candidates, token_budget)
        return self._context_plan(query, token_budget, items, estimated), {r.memory_id: r for r, _ in hits}

    @staticmethod
    def _context_plan(query: str, budget: int, items: list[ContextItem], estimated: bool) -> ContextPlan:
        return ContextPlan(
            query=query, token_budget=budget, items=tuple(items),
            text_tokens=sum(i.tokens for i in items if i.use == "text"),
            cached_tokens=sum(i.cached_tokens for i in items if i.use == "kv"), estimated=estimated,
            adapter=next((i.memory_id for i in items if i.use == "adapter"), None),
        )

    def _op_assemble_context(self: Kernel, principal: str, call: Any) -> ContextPlan:
        cubes = tuple(dict.fromkeys(call.cubes))
        plan, _ = self._assemble(principal, call.query, cubes, call.k, call.token_budget, call.filters)
        self._record_reads([i.memory_id for i in plan.used], principal, self.clock.now())
        self._audit_read(principal, call.op, cubes[0] if len(cubes) == 1 else None,
                       detail=f"{len(plan.used)} of {len(plan.items)} memories, {plan.text_tokens} text tokens")
        return plan

    # -------------------------------------------------------------------------------------------- generate

    def _plan_generate(self: Kernel, principal: str, call: Any) -> _GeneratePlan:
        self._require_model("generate")
        if call.memory and call.cubes:
            raise InvalidSyscall("give either cubes (memory chosen by assemble_context) or memory (exact ids), not both")
        context, rows = None, {}
        if call.memory:
            chosen = [self._require_memory(principal, m, Right.READ) for m in dict.fromkeys(call.memory)]
            for row in chosen:
                if row.state != State.ACTIVE:
                    raise InvalidSyscall(f"memory {row.memory_id} is {row.state}; only active memory is injected")
            items, estimated = self._plan_items([(r, 1.0, "requested") for r in chosen], call.token_budget)
            context = self._context_plan("", call.token_budget, items, estimated)
            rows = {r.memory_id: r for r in chosen}
        elif call.cubes:
            users = [m.content for m in call.messages if m.role == "user"]
            if not users:
                raise InvalidSyscall("generate with cubes needs a user message to choose memory for")
            context, rows = self._assemble(principal, users[-1][:4096], tuple(dict.fromkeys(call.cubes)), call.k,
                                           call.token_budget, SearchFilters())
        adapter = None
        if call.adapter is not None:
            row = self._require_memory(principal, call.adapter, Right.READ)
            why = self._usable_adapter(row, allow_stale=call.allow_stale)
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
            elif item.use in ("kv", "text"):
                texts.append(row.content)
        return _GeneratePlan(context, rows, kv, texts, adapter)

    def _work_generate(self: Kernel, call: Any, plan: _GeneratePlan, job: Any = None) -> Generation:
        messages = [{"role": m.role, "content": m.content} for m in call.messages]
        return self.model.generate(  # type: ignore[union-attr]
            messages, kv=plan.kv, texts=plan.texts, max_new_tokens=call.max_new_tokens, adapter=plan.adapter
        )

    def _abort_generate(self: Kernel, principal: str, plan: _GeneratePlan) -> None:
        """Nothing to undo: planning a generation changes nothing."""

    def _commit_generate(self: Kernel, principal: str, call: Any, plan: _GeneratePlan, out: Generation) -> GenerateResult:
        now = self.clock.now()
        used = [i.memory_id for i in plan.context.used] if plan.context else []
        from_disk = set(out.kv_loaded_from_disk)
        for block in plan.kv:
            row = plan.rows[block.memory_id]
            self._emit("activation_used", row.cube, row.memory_id, principal,
                       tier="disk" if block.memory_id in from_disk else "ram")
        if plan.adapter is not None:
            row = plan.rows[plan.adapter.memory_id]
            self._emit("adapter_used", row.cube, row.memory_id, principal, stale=row.stale)
            used.append(row.memory_id)
        for memory_id in out.ram_evicted:
            cube = self.store.memory_cube(memory_id)
            self._emit("evicted", cube, memory_id, "system", tier="ram", reason="model host RAM budget")
        self._record_reads(list(dict.fromkeys(used)), principal, now)
        cube = next(iter(call.cubes), None) if call.cubes else None
        self._audit_ok(principal, call.op, cube, detail=f"{len(plan.kv)} kv, {len(plan.texts)} text memories, "
                       f"{out.prompt_tokens} prompt tokens ({out.cached_tokens} cached)")
        return GenerateResult(
            text=out.text, finish_reason=out.finish_reason, plan=plan.context, prompt_tokens=out.prompt_tokens,
            cached_tokens=out.cached_tokens, ttft_s=out.ttft_s, total_s=out.total_s,
        )
