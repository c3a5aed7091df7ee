"""The retention score: how much a memory is still "remembered", in [0, 1], MemoryBank/Ebbinghaus style.

The score decays exponentially with the time since the memory was last used, and every read makes it decay more
slowly, as rehearsal strengthens a human memory::

    R = 2 ** (-Δt / H)
    H = halflife * (1 + ln(1 + reads)) * importance
    importance = Π tag_weights[t] for the memory's tags that have a weight  (× untrusted_weight if untrusted)

- ``Δt`` is the time since the last use: the latest of creation, the current version's update and the last read
  (a write or an edit is a use too). A memory used "in the future" (clock skew) counts as just used.
- ``H`` is a half-life: an unread memory of importance 1 falls to 0.5 after ``halflife``, to 0.1 after about
  ``3.3 * halflife``. Reads stretch it logarithmically (10 reads: ×3.4, 100 reads: ×5.6), so a popular memory
  lasts longer but nothing lives forever on reads alone.
- Pinned memories score 1.0 and never decay (``H`` is infinite).

``score`` is a pure function of (memory, now, parameters); the parameters are the policy's ``retention`` section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memos.schedulers.spec import Retention
from memos.types import Memory, Trust, to_epoch


@dataclass(frozen=True)
class RetentionScore:
    """A score with the terms that produced it, so that a dry run can say why."""

    value: float
    idle_s: float
    halflife_s: float
    reads: int
    importance: float

    def __str__(self) -> str:
        if math.isinf(self.halflife_s):
            return f"{self.value:.2f} (pinned)"
        return f"{self.value:.2f}"


def is_migration(memory: Memory) -> bool:
    """Whether the memory's current version only changed its kind (a migration, by a policy or by hand)."""
    return memory.provenance.operation.startswith("migrate:")


def last_use(memory: Memory) -> float:
    """Epoch seconds of the latest creation, update or read of the memory.

    A migration is not a use: when the current version is one, its time does not count (otherwise a demotion would
    make the memory look freshly used, and the promote/demote pair would flap). The update before it is then not
    known here either, so idle time counts from the later of the creation and the last read.
    """
    times = [to_epoch(memory.created_at)]
    if not is_migration(memory):
        times.append(to_epoch(memory.updated_at))
    if memory.last_read_at is not None:
        times.append(to_epoch(memory.last_read_at))
    return max(times)


def kind_since(memory: Memory) -> float:
    """Epoch seconds of the current version: the migration that gave the memory its kind, or a later version (so
    the residency it gives is never longer than the true one)."""
    return to_epoch(memory.updated_at)


def importance(memory: Memory, params: Retention) -> float:
    """The product of the weights of the memory's weighted tags, and of ``untrusted_weight`` if it is untrusted."""
    factor = 1.0
    for tag in sorted(set(memory.tags)):
        factor *= params.tag_weights.get(tag, 1.0)
    if memory.provenance.trust == Trust.UNTRUSTED:
        factor *= params.untrusted_weight
    return factor


def score(memory: Memory, now: float, params: Retention) -> RetentionScore:
    """The retention of ``memory`` at ``now`` (epoch seconds) under ``params``; 1.0 for pinned memories."""
    idle = max(0.0, now - last_use(memory))
    weight = importance(memory, params)
    if memory.pinned:
        return RetentionScore(value=1.0, idle_s=idle, halflife_s=math.inf, reads=memory.reads, importance=weight)
    halflife = params.halflife * (1.0 + math.log1p(memory.reads)) * weight
    return RetentionScore(
        value=2.0 ** (-idle / halflife), idle_s=idle, halflife_s=halflife, reads=memory.reads, importance=weight
    )
