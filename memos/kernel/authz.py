"""Authorisation: who holds which right on which cube, and the checks every handler makes.

A cube's grants map principals (or ``*``, everyone) to one right; rights are ordered ``read < write < admin`` and the
effective right is the highest of the principal's own grant and ``*``'s. The cube's owner holds ``admin`` from
creation and cannot lose it. Superusers (the kernel's configured system principals, e.g. the policy scheduler) hold
every right on every cube. ``effective_right`` and ``allows`` are pure functions of the grants; the ``require_*``
checks enforce them for a call.

A memory addressed by id in a cube the principal cannot read at all is reported ``NotFound`` (``Concealed``: its
existence is not revealed); the audit log still records the denial.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from memos.errors import NotFound, PermissionDenied
from memos.types import EVERYONE, Job, Right

if TYPE_CHECKING:
    from memos.kernel.context import CallContext
    from memos.kernel.kernel import Kernel
    from memos.storage.sqlite import VersionRow

DEFAULT_SUPERUSERS = frozenset({"system"})


class Concealed(NotFound):
    """A denial reported to the caller as NotFound (so a memory's existence is not revealed) but audited as the
    denial it is. Only ``memory_id`` (which the caller already named) travels in its details."""

    def __init__(self, message: str, denial: PermissionDenied, **details: Any) -> None:
        super().__init__(message, **details)
        self.denial = denial


def effective_right(principal: str, grants: Iterable[tuple[str, str]], superusers: frozenset[str]) -> Right | None:
    """The highest right ``principal`` holds, or None."""
    if principal in superusers:
        return Right.ADMIN
    best: Right | None = None
    for who, right in grants:
        if who in (principal, EVERYONE):
            r = Right(right)
            if best is None or r.level > best.level:
                best = r
    return best


def allows(held: Right | None, needed: Right) -> bool:
    return held is not None and held.implies(needed)


def right_on(kernel: Kernel, principal: str, cube: str) -> Right | None:
    return effective_right(principal, kernel.store.grants(cube), kernel.superusers)


def require_cube(ctx: CallContext, cube: str, needed: Right) -> None:
    """The cube exists and the caller holds ``needed`` on it, else ``NotFound`` / ``PermissionDenied``."""
    if ctx.kernel.store.get_cube(cube) is None:
        raise NotFound(f"cube {cube!r} does not exist", cube=cube)
    if not allows(right_on(ctx.kernel, ctx.principal, cube), needed):
        raise PermissionDenied(
            f"{ctx.principal} lacks the {needed.value!r} right on cube {cube!r}", cube=cube, right=needed.value
        )


def require_memory(ctx: CallContext, memory_id: str, needed: Right, version: int | None = None) -> VersionRow:
    """The memory's version (current by default) if the caller holds ``needed`` on its cube.

    Raises:
        NotFound: no such memory or version, or the caller may not read the memory's cube (``Concealed``).
        PermissionDenied: the caller may read it but lacks ``needed``.
    """
    store, principal = ctx.kernel.store, ctx.principal
    row = store.get_version(memory_id, version)
    if row is None:
        if version is not None and store.get_version(memory_id) is not None:
            require_memory(ctx, memory_id, Right.READ)
            raise NotFound(f"memory {memory_id} has no version {version}", memory_id=memory_id, version=version)
        raise NotFound(f"memory {memory_id} not found", memory_id=memory_id)
    held = right_on(ctx.kernel, principal, row.cube)
    if not allows(held, Right.READ):
        denial = PermissionDenied(
            f"{principal} lacks the {needed.value!r} right on cube {row.cube!r}",
            cube=row.cube, right=needed.value, memory_id=memory_id,
        )
        raise Concealed(f"memory {memory_id} not found", denial, memory_id=memory_id)
    if not allows(held, needed):
        raise PermissionDenied(
            f"{principal} lacks the {needed.value!r} right on cube {row.cube!r}",
            cube=row.cube, right=needed.value, memory_id=memory_id,
        )
    return row


def readable_cubes(ctx: CallContext) -> list[str]:
    """The cubes the caller may read, in the store's order."""
    kernel = ctx.kernel
    return [c.name for c in kernel.store.list_cubes() if allows(right_on(kernel, ctx.principal, c.name), Right.READ)]


def policy_rule(ctx: CallContext, call: Any) -> str | None:
    """The rule a change is attributed to. Only superusers (the policy scheduler) may attribute changes."""
    rule = getattr(call, "policy_rule", None)
    if rule is not None and ctx.principal not in ctx.kernel.superusers:
        raise PermissionDenied(f"{ctx.principal} may not attribute a change to policy rule {rule!r}; only the "
                               "policy scheduler (a system principal) may", right="system")
    return rule


def job_view(ctx: CallContext, job: Job) -> Job | None:
    """The job as the caller may see it, or None when it may not see it at all.

    Its starter, superusers and whoever may read every cube it touches see all of it. The admins of a
    distillation's target cube (its first cube) see it too, so that they may cancel it: only the cubes they can
    read, and no source memory ids (sources may lie in cubes they cannot read)."""
    if ctx.principal in ctx.kernel.superusers or ctx.principal == job.principal:
        return job
    readable = set(readable_cubes(ctx))
    if all(cube in readable for cube in job.cubes):
        return job
    if job.op == "distill" and job.cubes and target_admin(ctx, job):
        return job.model_copy(update={"cubes": tuple(c for c in job.cubes if c in readable), "memory_ids": ()})
    return None


def target_admin(ctx: CallContext, job: Job) -> bool:
    """The caller administers the cube a distillation job trains into."""
    return job.op == "distill" and bool(job.cubes) and allows(right_on(ctx.kernel, ctx.principal, job.cubes[0]), Right.ADMIN)
