"""What an evaluation returns: planned actions, each a syscall (or an intent) tagged with its rule and reason.

Archive, delete, pin and fuse are kernel syscalls (``memos.syscalls``) and are planned as such. Migration,
distillation and compression are planned as the small frozen intents below, which the runner turns into kernel
syscalls (``runner.to_syscall``: ``migrate``, ``distill``, ``compress``, ``merge``). Every action that changes one memory carries the version the engine saw
(``expected_version``), so a memory edited between the snapshot and the execution is refused with
``VersionConflict`` instead of being acted on by a decision made about its older self.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from memos.syscalls import Archive, Delete, Fuse, Pin
from memos.types import AdoptionGate, DistillRecipe, Kind, KVCompression, MemoryRef


@dataclass(frozen=True)
class MigrateIntent:
    """Move memory ``id`` (seen at ``expected_version``) from ``from_kind`` to ``to`` (plaintext or activation).

    Promotion (plaintext -> activation) builds the KV cache of the memory's content; demotion drops the derived
    payload and keeps the plaintext, which every kind holds.
    """

    op: ClassVar[str] = "migrate"

    id: str
    cube: str
    from_kind: Kind
    to: Kind
    expected_version: int
    compression: KVCompression | None = None  # promotion only: how the KV cache is stored


@dataclass(frozen=True)
class DistillIntent:
    """Train one LoRA adapter (a new parametric memory in ``cube``) from ``sources`` at exactly those versions."""

    op: ClassVar[str] = "distill"

    cube: str
    sources: tuple[MemoryRef, ...]
    into: Kind = Kind.PARAMETRIC
    allow_untrusted: bool = False  # the rule allows untrusted sources (allow_untrusted or trust: untrusted)
    gate: AdoptionGate = AdoptionGate()
    recipes: tuple[DistillRecipe, ...] = ()


@dataclass(frozen=True)
class CompressIntent:
    """Summarise memory ``id`` (seen at ``expected_version``) into a new memory of at most ``max_bytes`` derived
    from it (the kernel's ``compress``); the source is archived unless ``keep_sources``."""

    op: ClassVar[str] = "compress"

    id: str
    cube: str
    max_bytes: int
    expected_version: int
    keep_sources: bool = False


@dataclass(frozen=True)
class MergeIntent:
    """Fuse the memories of ``sources`` (one cube, one trust level, at those versions) that mean the same: the
    kernel groups them by embedding similarity and its summariser writes each group's text (``merge``)."""

    op: ClassVar[str] = "merge"

    cube: str
    sources: tuple[MemoryRef, ...]
    similarity: float
    max_group: int
    keep_sources: bool = False


Action = Archive | Delete | Pin | Fuse | MigrateIntent | DistillIntent | CompressIntent | MergeIntent


@dataclass(frozen=True)
class PlannedAction:
    """One thing the policy wants done. ``policy_rule`` goes into the provenance of what the kernel writes."""

    policy: str
    rule: str
    syscall: Action
    cube: str
    memories: tuple[MemoryRef, ...]
    reason: str

    @property
    def policy_rule(self) -> str:
        return f"{self.policy}/{self.rule}"


@dataclass(frozen=True)
class Skipped:
    """A rule whose conditions held but which did not act, and why (a guard, a budget, a group too small, the
    rule's limit). ``memory`` is None for a note about a group of memories of ``cube``; ``cube`` is None too for a
    note about the whole rule."""

    rule: str
    cube: str | None
    memory: MemoryRef | None
    reason: str


@dataclass(frozen=True)
class BudgetUsage:
    """A budget before and after the planned actions; ``cube`` is set for the per-cube plaintext budgets."""

    budget: str
    cube: str | None
    before: float
    after: float
    limit: float


@dataclass(frozen=True)
class Plan:
    """The outcome of one evaluation: the actions in execution order, the notes, and how much was looked at."""

    policy: str
    at: float
    actions: tuple[PlannedAction, ...]
    skipped: tuple[Skipped, ...]
    memories_considered: int
    cubes_considered: tuple[str, ...]
    budgets: tuple[BudgetUsage, ...]
