"""The activation disk budget: per cube, under a global cap, and who may be evicted for whom.

What is counted: the bytes of every activation payload file on disk -- the caches of current activation versions
and the *kept* caches (files of older versions that a rollback can make current again, ``memos.kernel.versions``)
-- and the number of current activation memories. Each cube has its own limits (``cube_disk_bytes``,
``cube_max_memories``) and all cubes together have a global cap (``disk_bytes``, ``max_memories``).

When a migration (or a rollback that rebuilt a cache) commits, the budget is enforced in this order:

1. **Kept caches** (no current version uses them) are deleted, oldest first (the one that stopped being current
   longest ago): first in the cubes that are over their own limit, then anywhere while the global cap is exceeded.
   Deleting a kept cache writes no version and changes no answer: a rollback to its version rebuilds it. It is
   the only thing one principal's action may take from a cube it cannot write.
2. **Current caches of the cubes over their own limit** are demoted to plaintext, least recently used first (last
   read, else last change; then fewest reads). The caller wrote into those cubes (it migrated memories there).
3. **The global cap** is met by demoting current caches only in cubes the caller may write (superusers, such as the
   policy scheduler: every cube), taking first from the cube furthest over its fair share (the cap divided by the
   number of cubes holding caches), least recently used first within it.

Pinned memories and the memories being migrated are never demoted. A demotion is a new version by ``system``
(operation ``migrate:plaintext``) and its cache file is deleted: it was evicted to make room. If the limits still
cannot be met, the call fails with ``CapacityExceeded``, which names only the caller's cubes, its own figures and
the configured caps -- never another cube's usage -- and commits nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from memos.errors import CapacityExceeded
from memos.kernel import events as ev
from memos.kernel.authz import allows, right_on
from memos.kernel.versions import delete_blob, derived_provenance, next_version
from memos.types import Kind, MemoryRef, Right

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.storage.sqlite import SqliteStore, VersionRow

GIB = 1024**3
REASON = "activation disk budget"


@dataclass(frozen=True)
class ActivationBudget:
    """Limits of the activation disk tier (None: unlimited). ``disk_bytes``/``max_memories`` are the global cap;
    ``cube_disk_bytes``/``cube_max_memories`` hold for each cube on its own."""

    disk_bytes: int | None = 2 * GIB
    max_memories: int | None = None
    cube_disk_bytes: int | None = None
    cube_max_memories: int | None = None


def demote(ctx: CallContext, row: VersionRow, *, principal: str, reason: str, rule: str | None = None) -> VersionRow:
    """Version n+1 of an activation memory as plaintext. Its cache file is kept (``memos.kernel.versions``): the
    budget's evictions delete it themselves."""
    prov = derived_provenance(
        row, author=principal, operation="migrate:plaintext", policy_rule=rule,
        derived_from=(MemoryRef(id=row.memory_id, version=row.version),), source_refs=(),
    )
    new = next_version(ctx, row, prov, kind=Kind.PLAINTEXT.value, fingerprint=None, payload=None)
    ctx.emit(ev.Evicted(
        cube=row.cube, memory_id=row.memory_id, principal=principal, tier="disk", reason=reason, version=new.version,
    ))
    return new


class _Usage:
    """Bytes on disk and current caches, per cube and in all; updated as things are evicted."""

    def __init__(self, current: list[VersionRow], kept: dict[str, tuple[str, str, list[int], int]]) -> None:
        self.bytes: defaultdict[str, int] = defaultdict(int)
        self.count: defaultdict[str, int] = defaultdict(int)
        for row in current:
            self.bytes[row.cube] += (row.payload or {}).get("size_bytes", 0)
            self.count[row.cube] += 1
        for _memory, cube, _versions, size in kept.values():
            self.bytes[cube] += size

    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def total_count(self) -> int:
        return sum(self.count.values())

    def cube_over(self, budget: ActivationBudget, cube: str) -> bool:
        return (budget.cube_disk_bytes is not None and self.bytes[cube] > budget.cube_disk_bytes) or (
            budget.cube_max_memories is not None and self.count[cube] > budget.cube_max_memories
        )

    def global_over(self, budget: ActivationBudget) -> bool:
        return (budget.disk_bytes is not None and self.total_bytes() > budget.disk_bytes) or (
            budget.max_memories is not None and self.total_count() > budget.max_memories
        )

    def share(self, budget: ActivationBudget, cube: str) -> float:
        """The part of the global cap the cube holds (the larger of its bytes and count fractions)."""
        parts = [0.0]
        if budget.disk_bytes:
            parts.append(self.bytes[cube] / budget.disk_bytes)
        if budget.max_memories:
            parts.append(self.count[cube] / budget.max_memories)
        return max(parts)


def _kept_files(ctx: CallContext) -> dict[str, tuple[str, str, list[int], int]]:
    """path -> (memory id, cube, versions, bytes) of the kept caches still on disk, oldest first."""
    kept: dict[str, tuple[str, str, list[int], int]] = {}
    for memory_id, cube, version, payload, _valid_to in ctx.kernel.store.kept_activation_payloads():
        path = payload["path"]
        if path in kept:
            kept[path][2].append(version)
        elif Path(path).exists():
            kept[path] = (memory_id, cube, [version], int(payload.get("size_bytes", 0)))
    return kept


def kept_bytes(store: SqliteStore) -> int:
    """Bytes of the kept caches on disk (older versions' caches no current version uses): they count against the
    disk budget with the current ones."""
    seen: dict[str, int] = {}
    for _memory, _cube, _version, payload, _valid_to in store.kept_activation_payloads():
        if payload["path"] not in seen and Path(payload["path"]).exists():
            seen[payload["path"]] = int(payload.get("size_bytes", 0))
    return sum(seen.values())


def _lru(row: VersionRow) -> tuple[float, int]:
    return (row.last_read_at if row.last_read_at is not None else row.valid_from, row.reads)


def enforce_activation_budget(ctx: CallContext, keep: set[str]) -> None:
    """Make the activation tier fit its limits after ``ctx``'s migration into the cubes of ``keep`` (the memories
    it made activation; never evicted). See the module docstring for the order.

    Raises:
        CapacityExceeded: the limits cannot be met by what the caller may evict (nothing is committed).
    """
    kernel, budget = ctx.kernel, ctx.kernel.budgets
    current = kernel.store.current_of_kind(Kind.ACTIVATION.value)
    kept = _kept_files(ctx)
    usage = _Usage(current, kept)
    targets = {r.cube for r in current if r.memory_id in keep}

    def evict_kept(path: str) -> None:
        memory_id, cube, versions, size = kept.pop(path)
        usage.bytes[cube] -= size
        ctx.after_commit(lambda p=Path(path): delete_blob(kernel, p))
        ctx.emit(ev.Evicted(
            cube=cube, memory_id=memory_id, principal="system", tier="disk", reason=REASON, versions=sorted(versions),
            kept=True,
        ))

    for path in [p for p, (_, cube, _, _) in kept.items() if cube in targets]:
        if usage.cube_over(budget, kept[path][1]):
            evict_kept(path)
    for path in list(kept):
        if not usage.global_over(budget):
            break
        evict_kept(path)

    candidates = sorted((r for r in current if not r.pinned and r.memory_id not in keep), key=_lru)

    def evict_current(row: VersionRow) -> None:
        candidates.remove(row)
        demote(ctx, row, principal="system", reason=REASON)
        if row.payload is not None:
            ctx.after_commit(lambda p=Path(row.payload["path"]): delete_blob(kernel, p))
        usage.bytes[row.cube] -= (row.payload or {}).get("size_bytes", 0)
        usage.count[row.cube] -= 1

    for cube in sorted(targets):
        for row in [r for r in candidates if r.cube == cube]:
            if not usage.cube_over(budget, cube):
                break
            evict_current(row)
        if usage.cube_over(budget, cube):
            raise CapacityExceeded(
                f"cube {cube!r} may hold {budget.cube_disk_bytes} bytes and {budget.cube_max_memories} activation "
                f"memories; it would hold {usage.bytes[cube]} bytes in {usage.count[cube]} caches without evicting "
                "its pinned memories or the ones being migrated", cube=cube, bytes=usage.bytes[cube],
                memories=usage.count[cube],
            )

    if ctx.principal in kernel.superusers:
        writable = {r.cube for r in candidates}
    else:
        writable = {c for c in {r.cube for r in candidates} if allows(right_on(kernel, ctx.principal, c), Right.WRITE)}
    holders = {c for c, n in usage.count.items() if n > 0} | {c for c, b in usage.bytes.items() if b > 0}
    while usage.global_over(budget):
        fair = 1.0 / max(1, len(holders))
        open_cubes = [c for c in writable if any(r.cube == c for r in candidates)]
        if not open_cubes:
            mine = sorted(targets)
            raise CapacityExceeded(
                f"the server-wide activation cap ({budget.disk_bytes} bytes, {budget.max_memories} memories) is "
                f"full; evicting the unpinned caches of the cubes you may write does not make room for "
                f"{', '.join(mine) or 'this migration'}: demote or unpin some of yours, or ask an operator to raise "
                "the cap", cubes=mine, cap_bytes=budget.disk_bytes, cap_memories=budget.max_memories,
            )
        cube = max(open_cubes, key=lambda c: usage.share(budget, c) - fair)
        evict_current(next(r for r in candidates if r.cube == cube))
