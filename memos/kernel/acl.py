"""Access control: who holds which right on which cube.

A cube's grants map principals (or ``*``, everyone) to one right; rights are ordered ``read < write < admin`` and the
effective right is the highest of the principal's own grant and ``*``'s. The cube's owner holds ``admin`` from
creation and cannot lose it. Superusers (the kernel's configured system principals, e.g. the policy scheduler) hold
every right on every cube. Decisions are pure functions of the grants; the kernel enforces them on every syscall.
"""

from __future__ import annotations

from collections.abc import Iterable

from memos.types import EVERYONE, Right


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
