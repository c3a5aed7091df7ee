"""The policy engine: a loaded policy compiled once, then evaluated as a pure function of (policy, snapshot, now).

Semantics of one evaluation (docs/policies.md says the same for users):

- Scope: the memories of the cubes the policy governs (``applies_to``), deleted ones excluded. Each rule looks at
  memories of the states in its ``when.state`` (default ``active``) and of the kinds its action can change.
- Rules run in file order. A memory gets at most one action per evaluation: the first rule that acts on it claims
  it, and later rules do not see it. A rule whose conditions hold but which does not act (a guard, a budget, a
  group too small) leaves the memory to later rules and records a note saying why.
- Guards, whatever the rule says: pinned memories are never archived, deleted, demoted, fused or compressed;
  untrusted memories are never promoted or distilled unless the rule sets ``allow_untrusted: true`` or
  ``when.trust: untrusted``. Actions that would change nothing (pin a pinned memory, compress a memory already
  small enough, distill a memory version an adapter already holds) are not planned.
- Visiting order within a rule: promotions, distillation, fusion and pins take the most-read memories first (reads
  in the rule's ``reads.within`` window, else lifetime reads; then the most recently used); every other action
  takes the least-retained first (lowest retention score, then least recently used). With ``budget_pressure`` and ``limit``
  this is what makes a demotion rule evict least-valuable caches first and stop once the budget is met.
- Budgets are projected: each planned action updates the usage that later ``budget_pressure`` conditions see.
  A promotion whose KV-cache size the snapshot estimates is not planned if it would overrun ``activation_bytes``.
- Same policy, snapshot and ``now``: same plan, whatever the order of the snapshot's memories.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from memos.errors import PolicyError
from memos.schedulers.actions import (
    Action,
    BudgetUsage,
    CompressIntent,
    DistillIntent,
    MergeIntent,
    MigrateIntent,
    Plan,
    PlannedAction,
    Skipped,
)
from memos.schedulers.conditions import Condition, compile_when
from memos.schedulers.facts import Facts, Ledger
from memos.schedulers.similarity import star_groups, words
from memos.schedulers.snapshot import KernelSnapshot
from memos.schedulers.spec import PolicySpec, Rule, Then, format_loc, semantic_problems
from memos.schedulers.units import format_size
from memos.syscalls import MAX_TAGS, Archive, Delete, Fuse, Pin
from memos.types import Kind, Memory, MemoryRef, State, Trust, to_epoch


def _glob(pattern: str) -> re.Pattern[str]:
    """``**`` spans segments, ``*`` and ``?`` stay within one (``team/*`` is not ``team/a/b``)."""
    out = []
    for part in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part)))
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its conditions compiled; ``index`` is its position in the file."""

    index: int
    spec: Rule
    conditions: tuple[Condition, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def then(self) -> Then:
        return self.spec.then

    @property
    def summary(self) -> str:
        return ", ".join(condition.summary for condition in self.conditions)

    @property
    def static(self) -> tuple[Condition, ...]:
        return tuple(condition for condition in self.conditions if not condition.dynamic)

    @property
    def dynamic(self) -> tuple[Condition, ...]:
        return tuple(condition for condition in self.conditions if condition.dynamic)

    @property
    def hot_first(self) -> bool:
        """Promote, distill, fuse and pin visit the most-read memories first (a fuse keeps its seed's text)."""
        then = self.then
        return then.promotes or then.distill is not None or then.fuse is not None or bool(then.pin)


@dataclass(frozen=True)
class CompiledPolicy:
    """A validated policy ready to evaluate. Build it with :func:`compile_policy` (or ``loader.load_policy``)."""

    spec: PolicySpec
    source: str | None
    rules: tuple[CompiledRule, ...]
    include: tuple[re.Pattern[str], ...]
    exclude: tuple[re.Pattern[str], ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def interval_s(self) -> float | None:
        """Seconds between evaluations (``schedule.every``), or None for a cron schedule."""
        return self.spec.schedule.every

    @property
    def cron(self) -> str | None:
        return self.spec.schedule.cron

    @property
    def read_window_s(self) -> float:
        """The longest ``reads.within`` of any rule: how far back ``KernelSnapshot.read_times`` must reach."""
        windows = [r.when.reads.within for r in self.spec.rules if r.when.reads and r.when.reads.within]
        return max(windows, default=0.0)

    def governs(self, cube: str) -> bool:
        return any(p.match(cube) for p in self.include) and not any(p.match(cube) for p in self.exclude)


def compile_policy(spec: PolicySpec, source: str | None = None) -> CompiledPolicy:
    """Compile a policy spec; ``source`` (the file it came from) is shown in dry runs and errors.

    Raises:
        PolicyError: the spec breaks a rule of :func:`memos.schedulers.spec.semantic_problems` (possible only for
            specs built in Python: ``loader.load_policy`` reports those with line numbers before compiling).
    """
    problems = [f"{source or spec.name} {format_loc(loc)}: {message}" for loc, message in semantic_problems(spec)]
    if problems:
        raise PolicyError("\n".join(problems), problems=problems, file=source)
    return CompiledPolicy(
        spec=spec,
        source=source,
        rules=tuple(CompiledRule(i, rule, compile_when(rule.when)) for i, rule in enumerate(spec.rules)),
        include=tuple(_glob(p) for p in spec.applies_to.cubes),
        exclude=tuple(_glob(p) for p in spec.applies_to.exclude),
    )


def evaluate(policy: CompiledPolicy, snapshot: KernelSnapshot, now: float | datetime) -> list[PlannedAction]:
    """The actions ``policy`` plans on ``snapshot`` at ``now`` (epoch seconds or an aware datetime), in order."""
    return list(plan(policy, snapshot, now).actions)


def plan(policy: CompiledPolicy, snapshot: KernelSnapshot, now: float | datetime) -> Plan:
    """Like :func:`evaluate`, with the notes on what was not done and the budgets before and after."""
    at = to_epoch(now) if isinstance(now, datetime) else float(now)
    scope = sorted(
        (m for m in snapshot.memories if m.state != State.DELETED and policy.governs(m.cube)),
        key=lambda m: (m.cube, m.id),
    )
    facts = [Facts(m, at, snapshot.read_times.get(m.id, ()), policy.spec.retention) for m in scope]
    cubes = tuple(sorted({m.cube for m in scope}))
    ledger = Ledger(policy.spec.budgets, facts, snapshot.loaded_adapters)
    before = ledger.usage(cubes)
    run = _Evaluation(policy, snapshot, ledger, _distilled(snapshot.memories))
    for rule in policy.rules:
        run.apply(rule, [f for f in facts if f.memory.id not in run.claimed])
    after = ledger.usage(cubes)
    budgets = tuple(
        BudgetUsage(budget, cube, used, after[budget, cube], ledger.limit(budget) or 0)
        for (budget, cube), used in before.items()
    )
    return Plan(policy.name, at, tuple(run.actions), tuple(run.skipped), len(facts), cubes, budgets)


def _distilled(memories: Sequence[Memory]) -> frozenset[MemoryRef]:
    """Memory versions that an active, up-to-date adapter was trained on: distilling them again would change nothing."""
    return frozenset(
        ref
        for m in memories
        if m.kind == Kind.PARAMETRIC and m.state == State.ACTIVE and not m.stale
        for ref in m.provenance.derived_from
    )


class _Evaluation:
    """The mutable state of one evaluation: claimed memories, the plan so far, notes, the budget ledger."""

    def __init__(
        self, policy: CompiledPolicy, snapshot: KernelSnapshot, ledger: Ledger, distilled: frozenset[MemoryRef]
    ) -> None:
        self.policy = policy
        self.snapshot = snapshot
        self.ledger = ledger
        self.distilled = distilled
        self.claimed: set[str] = set()
        self.actions: list[PlannedAction] = []
        self.skipped: list[Skipped] = []

    # --------------------------------------------------------------------------------------------- visiting

    def apply(self, rule: CompiledRule, candidates: list[Facts]) -> None:
        then, ledger, static = rule.then, self.ledger, rule.static
        kinds, states = then.kinds, then.states & set(rule.spec.when.states)
        matching = [
            f
            for f in candidates
            if f.memory.kind in kinds and f.memory.state in states and all(c.holds(f, ledger) for c in static)
        ]
        matching.sort(key=self._order(rule))
        if then.distill is not None or then.fuse is not None:
            self._groups(rule, matching)
            return
        done = 0
        for fact in matching:
            if not self._eligible(rule, fact) or self._unchanged_by(rule, fact):
                continue
            if rule.spec.limit is not None and done == rule.spec.limit:
                self._limit_reached(rule)
                return
            blocked = self._budget_block(rule, fact)
            if blocked is not None:
                self._note(rule, fact, blocked)
                continue
            self._act(rule, fact, self._reason(rule, fact))
            done += 1

    def _order(self, rule: CompiledRule) -> Callable[[Facts], tuple[float, float, str, str]]:
        reads = rule.spec.when.reads
        window = reads.within if reads is not None else None
        if rule.hot_first:
            return lambda f: (-f.reads_within(window), -f.last_use, f.memory.cube, f.memory.id)
        return lambda f: (f.retention.value, f.last_use, f.memory.cube, f.memory.id)

    def _eligible(self, rule: CompiledRule, fact: Facts) -> bool:
        """The budget conditions hold now and no guard stops the action; a guard that does is noted. (The fixed
        conditions were checked by ``apply``.)"""
        if not all(condition.holds(fact, self.ledger) for condition in rule.dynamic):
            return False
        memory = fact.memory
        if memory.pinned and rule.then.spares_pinned:
            self._note(rule, fact, f"pinned: never {rule.then.verb}")
            return False
        if rule.spec.trust_guarded and memory.provenance.trust == Trust.UNTRUSTED:
            self._note(rule, fact, f"untrusted: not {rule.then.verb} (the rule needs allow_untrusted or trust: untrusted)")
            return False
        return True

    def _reason(self, rule: CompiledRule, fact: Facts) -> str:
        return ", ".join(condition.explain(fact, self.ledger) for condition in rule.conditions)

    def _unchanged_by(self, rule: CompiledRule, fact: Facts) -> bool:
        then, memory = rule.then, fact.memory
        if then.pin:
            return memory.pinned
        if then.compress is not None:
            return fact.content_bytes <= then.compress.max_bytes
        if then.distill is not None:
            return fact.ref in self.distilled
        return False

    def _budget_block(self, rule: CompiledRule, fact: Facts) -> str | None:
        if not rule.then.promotes:
            return None
        limit = self.ledger.limit("activation_bytes")
        estimate = self.snapshot.activation_estimates.get(fact.memory.id)
        if limit is None or estimate is None or self.ledger.activation_bytes + estimate <= limit:
            return None
        return (
            f"would overrun activation_bytes: {format_size(self.ledger.activation_bytes)} used "
            f"+ {format_size(estimate)} > {format_size(limit)}"
        )

    # --------------------------------------------------------------------------------------------- acting

    def _act(self, rule: CompiledRule, fact: Facts, reason: str) -> None:
        then, memory, ledger = rule.then, fact.memory, self.ledger
        if then.migrate is not None:
            syscall = MigrateIntent(memory.id, memory.cube, memory.kind, then.migrate, memory.version, then.compression)
            if then.promotes:
                ledger.add_activation(self.snapshot.activation_estimates.get(memory.id, 0))
            else:
                ledger.drop_activation(fact)
        elif then.compress is not None:
            syscall = CompressIntent(memory.id, memory.cube, then.compress.max_bytes, memory.version,
                                     then.compress.keep_sources)
            ledger.shrink_text(memory.cube, fact.content_bytes - then.compress.max_bytes)
        elif then.pin:
            syscall = Pin(id=memory.id)
        else:
            syscall = (Archive if then.archive else Delete)(id=memory.id, expected_version=memory.version)
            if memory.state == State.ACTIVE:
                ledger.remove(fact)
        self._plan(rule, syscall, memory.cube, (fact,), reason)

    def _groups(self, rule: CompiledRule, matching: list[Facts]) -> None:
        by_cube: dict[str, list[Facts]] = {}
        for fact in matching:
            if self._eligible(rule, fact) and not self._unchanged_by(rule, fact):
                by_cube.setdefault(fact.memory.cube, []).append(fact)
        budget = rule.spec.limit
        for cube in sorted(by_cube):
            if rule.then.distill is not None:
                groups = self._distill_groups(rule, cube, by_cube[cube])
            else:
                groups = self._fuse_groups(rule, by_cube[cube])
            for members, reason in groups:
                if budget is not None and budget == 0:
                    self._limit_reached(rule)
                    return
                self._plan_group(rule, cube, members, reason)
                if budget is not None:
                    budget -= 1

    def _distill_groups(self, rule: CompiledRule, cube: str, members: list[Facts]) -> list[tuple[list[Facts], str]]:
        args = rule.then.distill
        assert args is not None
        count = len(members)
        groups = math.ceil(count / args.max_group)
        # Fewer, larger groups when balanced ones would fall under min_group; the coldest may then wait.
        while groups and count // groups < args.min_group:
            groups -= 1
        if not groups:
            self.skipped.append(
                Skipped(rule.name, cube, None, f"{count} matching memories, fewer than min_group {args.min_group}")
            )
            return []
        taken = members[: min(count, groups * args.max_group)]
        size, extra = divmod(len(taken), groups)
        out, start = [], 0
        for index in range(groups):
            end = start + size + (1 if index < extra else 0)
            group = taken[start:end]
            out.append((group, f"group {index + 1} of {groups}: {len(group)} memories, each {rule.summary}"))
            start = end
        return out

    def _fuse_groups(self, rule: CompiledRule, members: list[Facts]) -> list[tuple[list[Facts], str]]:
        args = rule.then.fuse
        assert args is not None
        out = []
        # Fusing across trust levels would make the result untrusted and archive a trusted source.
        for trust in (Trust.TRUSTED, Trust.UNTRUSTED):
            same = [f for f in members if f.memory.provenance.trust == trust]
            if args.by == "meaning":
                for start in range(0, len(same), 256):  # the kernel groups them by embedding; 256 per merge
                    part = same[start:start + 256]
                    if len(part) > 1:
                        out.append((part, f"{len(part)} {trust.value} memories, each {rule.summary}; the kernel fuses "
                                          f"those that mean the same (embedding cosine >= {args.similarity:g})"))
                continue
            for indexes in star_groups([words(f.memory.content) for f in same], args.similarity, args.max_group):
                group = [same[i] for i in indexes]
                reason = (
                    f"{len(group) - 1} near-duplicate(s) of {group[0].memory.id} "
                    f"(word similarity >= {args.similarity:g}), each {rule.summary}"
                )
                out.append((group, reason))
        return out

    def _plan_group(self, rule: CompiledRule, cube: str, members: list[Facts], reason: str) -> None:
        if rule.then.distill is not None:
            sources = tuple(sorted((f.ref for f in members), key=lambda ref: ref.id))
            args = rule.then.distill
            intent = DistillIntent(cube, sources, allow_untrusted=not rule.spec.trust_guarded, gate=args.gate,
                                   recipes=tuple(args.recipes))
            self._plan(rule, intent, cube, tuple(members), reason)
            return
        args = rule.then.fuse
        assert args is not None
        if args.by == "meaning":  # how many memories it retires is known only when the kernel has grouped them
            merge = MergeIntent(cube, tuple(f.ref for f in members), args.similarity, args.max_group, args.keep_sources)
            self._plan(rule, merge, cube, tuple(members), reason)
            return
        seed = members[0].memory
        tags = list(dict.fromkeys([*seed.tags, *sorted({t for f in members[1:] for t in f.memory.tags})]))
        fuse = Fuse(
            ids=tuple(f.memory.id for f in members),
            cube=cube,
            content=seed.content,
            tags=tuple(tags[:MAX_TAGS]),
            metadata=dict(seed.metadata),
            keep_sources=args.keep_sources,
        )
        if not args.keep_sources:
            for fact in members:
                self.ledger.remove(fact)
        self.ledger.add_text(cube, members[0].content_bytes)
        self._plan(rule, fuse, cube, tuple(members), reason)

    def _plan(self, rule: CompiledRule, syscall: Action, cube: str, members: tuple[Facts, ...], reason: str) -> None:
        self.claimed.update(f.memory.id for f in members)
        refs = tuple(f.ref for f in members)
        self.actions.append(PlannedAction(self.policy.name, rule.name, syscall, cube, refs, reason))

    def _limit_reached(self, rule: CompiledRule) -> None:
        self._note(rule, None, f"limit of {rule.spec.limit} actions reached; the rest wait for the next evaluation")

    def _note(self, rule: CompiledRule, fact: Facts | None, reason: str) -> None:
        if fact is None:
            self.skipped.append(Skipped(rule.name, None, None, reason))
        else:
            self.skipped.append(Skipped(rule.name, fact.memory.cube, fact.ref, reason))
