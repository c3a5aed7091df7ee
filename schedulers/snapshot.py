"""The engine's only input about the kernel: a plain, immutable snapshot, built by the kernel at one instant.

The engine never calls the kernel; it reads this object and returns planned syscalls. That is what makes evaluation
a pure function and a dry run (``memos policy explain``) exactly what a real run would do on the same data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from memos.types import Memory


@dataclass(frozen=True)
class KernelSnapshot:
    """What the kernel knows that a policy may look at.

    Attributes:
        memories: the current version's header of every memory (active and archived; deleted ones are ignored),
            in any order and across any cubes: the engine keeps those the policy applies to. Each id at most once.
        read_times: memory id -> epoch seconds of its reads (any order). Reads older than the policy's longest
            ``reads.within`` window (``CompiledPolicy.read_window_s``) may be left out; a memory with no entry has
            had no reads in that window. Lifetime counts come from ``Memory.reads``.
        loaded_adapters: how many LoRA adapters the model host holds loaded now (for ``loaded_adapters`` pressure).
        activation_estimates: memory id -> expected KV-cache bytes if that memory were promoted to activation.
            With an estimate, a promotion that would overrun ``budgets.activation_bytes`` is not planned; without
            one, the kernel's own budget check decides when it executes the migration.

    Raises:
        ValueError: a memory id appears twice, or a count is negative.
    """

    memories: Sequence[Memory]
    read_times: Mapping[str, Sequence[float]] = field(default_factory=dict)
    loaded_adapters: int = 0
    activation_estimates: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        memories = tuple(self.memories)
        seen: set[str] = set()
        for memory in memories:
            if memory.id in seen:
                raise ValueError(f"memory {memory.id} appears twice in the snapshot")
            seen.add(memory.id)
        if self.loaded_adapters < 0:
            raise ValueError(f"loaded_adapters must be >= 0, got {self.loaded_adapters}")
        # Frozen in depth: the same snapshot may be evaluated against several policies.
        object.__setattr__(self, "memories", memories)
        object.__setattr__(
            self, "read_times", MappingProxyType({key: tuple(times) for key, times in self.read_times.items()})
        )
        object.__setattr__(self, "activation_estimates", MappingProxyType(dict(self.activation_estimates)))
