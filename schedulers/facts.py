"""What one evaluation knows: per-memory facts derived once, and the budget ledger projected as actions are planned.

``Facts`` wraps one memory at ``now``; each derived value (idle time, retention score, content bytes) is computed
once per evaluation however many rules look at it. ``Ledger`` starts from the usage in
the snapshot and is updated after each planned action, so that ``budget_pressure`` conditions see the effect of the
actions already planned: a rule that demotes "while activation bytes are above 90%" stops once enough is planned.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Sequence

from memos.schedulers.retention import RetentionScore, kind_since, last_use, score
from memos.schedulers.spec import BudgetName, Budgets, Retention
from memos.types import Kind, Memory, MemoryRef, State, to_epoch


class Facts:
    """One memory as the conditions see it at ``now`` (epoch seconds).

    Plain attributes, computed once: rules read them for every memory, many times per evaluation. Only the
    retention score, which not every policy asks for, is computed on first use.
    """

    __slots__ = (
        "activation_bytes", "age", "content_bytes", "idle", "last_use", "memory", "now", "resident", "unchanged",
        "_params", "_read_times", "_ref", "_score",
    )

    def __init__(self, memory: Memory, now: float, read_times: Sequence[float], retention: Retention) -> None:
        self.memory = memory
        self.now = now
        self.age = max(0.0, now - to_epoch(memory.created_at))
        self.last_use = last_use(memory)
        self.idle = max(0.0, now - self.last_use)
        self.unchanged = max(0.0, now - to_epoch(memory.updated_at))
        self.resident = max(0.0, now - kind_since(memory))
        self.content_bytes = len(memory.content.encode("utf-8"))
        # Bytes held against the activation budget: the KV cache of an active activation memory.
        payload = memory.payload
        active_cache = memory.kind == Kind.ACTIVATION and memory.state == State.ACTIVE
        self.activation_bytes = payload.size_bytes if active_cache and payload is not None else 0
        self._read_times = sorted(read_times)
        self._params = retention
        self._score: RetentionScore | None = None
        self._ref: MemoryRef | None = None

    @property
    def ref(self) -> MemoryRef:
        """The memory at the version seen (built on demand: most memories are never acted on)."""
        if self._ref is None:
            self._ref = self.memory.ref
        return self._ref

    @property
    def retention(self) -> RetentionScore:
        if self._score is None:
            self._score = score(self.memory, self.now, self._params)
        return self._score

    def reads_within(self, window: float | None) -> int:
        """Reads in ``(now - window, now]``; every read ever (``Memory.reads``) when ``window`` is None."""
        if window is None:
            return self.memory.reads
        low = bisect.bisect_right(self._read_times, self.now - window)
        high = bisect.bisect_right(self._read_times, self.now)
        return high - low


class Ledger:
    """Projected budget usage over the memories a policy governs, updated as actions are planned."""

    def __init__(self, budgets: Budgets, facts: Iterable[Facts], loaded_adapters: int) -> None:
        self._limits: dict[BudgetName, float] = budgets.model_dump(exclude_none=True)
        self.activation_bytes = 0
        self.loaded_adapters = loaded_adapters
        self.count: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        for fact in facts:
            if fact.memory.state == State.ACTIVE:
                self.activation_bytes += fact.activation_bytes
                self.count[fact.memory.cube] += 1
                self.bytes[fact.memory.cube] += fact.content_bytes

    def limit(self, budget: BudgetName) -> float | None:
        return self._limits.get(budget)

    def used(self, budget: BudgetName, cube: str) -> float:
        """Current projected usage; the plaintext budgets are per cube."""
        if budget == "activation_bytes":
            return self.activation_bytes
        if budget == "loaded_adapters":
            return self.loaded_adapters
        if budget == "plaintext_count":
            return self.count[cube]
        return self.bytes[cube]

    def usage(self, cubes: Iterable[str]) -> dict[tuple[BudgetName, str | None], float]:
        """Usage of every set budget: (budget, None) for the global ones, (budget, cube) per cube for plaintext."""
        usage: dict[tuple[BudgetName, str | None], float] = {}
        for budget in self._limits:
            if budget.startswith("plaintext"):
                for cube in cubes:
                    usage[(budget, cube)] = self.used(budget, cube)
            else:
                usage[(budget, None)] = self.used(budget, "")
        return usage

    def pressure(self, budget: BudgetName, cube: str) -> float:
        """used / limit; infinite for a zero limit with any use. The loader guarantees the budget is set."""
        limit = self._limits[budget]
        used = self.used(budget, cube)
        if limit == 0:
            return float("inf") if used else 0.0
        return used / limit

    def remove(self, fact: Facts) -> None:
        """An active memory leaves the budgets (archived, deleted, or fused away)."""
        self.count[fact.memory.cube] -= 1
        self.bytes[fact.memory.cube] -= fact.content_bytes
        self.activation_bytes -= fact.activation_bytes

    def drop_activation(self, fact: Facts) -> None:
        """A demotion frees the memory's KV cache."""
        self.activation_bytes -= fact.activation_bytes

    def add_activation(self, size: int) -> None:
        self.activation_bytes += size

    def add_text(self, cube: str, content_bytes: int) -> None:
        """A new active memory of ``content_bytes`` (a fused memory)."""
        self.count[cube] += 1
        self.bytes[cube] += content_bytes

    def shrink_text(self, cube: str, by: int) -> None:
        self.bytes[cube] -= by
