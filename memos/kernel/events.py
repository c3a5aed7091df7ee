"""Kernel events: one frozen type per kind of event.

An event is written to the outbox in the same transaction as the change it reports (``CallContext.emit``) and
delivered to the observers (``KernelObserver.event``) only once that transaction committed. Every event carries
``cube`` (who may see it: the cube's readers, or superusers only when None), ``memory_id`` and ``principal``; the
other fields are its own. In the outbox and on the wire (``memos.types.Event``) those other fields are the ``data``
object; ``from_record`` turns a stored or wire event back into its type.

Fields marked *optional* are left out of ``data`` when they are None (e.g. ``Migrated.tokens`` exists only for a
migration to activation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

_ENVELOPE = ("cube", "memory_id", "principal")
_OPTIONAL = {"optional": True}


@dataclass(frozen=True, kw_only=True)
class KernelEvent:
    type: ClassVar[str] = ""

    cube: str | None
    memory_id: str | None = None
    principal: str | None = None

    def data(self) -> dict[str, Any]:
        """The event's own fields (what the outbox stores as ``data``)."""
        out = {}
        for f in fields(self):
            if f.name in _ENVELOPE:
                continue
            value = getattr(self, f.name)
            if value is None and f.metadata.get("optional"):
                continue
            out[f.name] = value
        return out


TYPES: dict[str, type[KernelEvent]] = {}


def _event(cls: type[KernelEvent]) -> type[KernelEvent]:
    TYPES[cls.type] = cls
    return cls


# ------------------------------------------------------------------------------------------------ cubes and rights

@_event
@dataclass(frozen=True, kw_only=True)
class CubeCreated(KernelEvent):
    type: ClassVar[str] = "cube_created"


@_event
@dataclass(frozen=True, kw_only=True)
class CubeDropped(KernelEvent):
    type: ClassVar[str] = "cube_dropped"
    purged: int


@_event
@dataclass(frozen=True, kw_only=True)
class Granted(KernelEvent):
    type: ClassVar[str] = "granted"
    to: str
    right: str


@_event
@dataclass(frozen=True, kw_only=True)
class Revoked(KernelEvent):
    type: ClassVar[str] = "revoked"
    frm: str


@_event
@dataclass(frozen=True, kw_only=True)
class Denied(KernelEvent):
    """A syscall refused for a missing right (audited too)."""

    type: ClassVar[str] = "denied"
    op: str
    right: str | None = None


# ------------------------------------------------------------------------------------------------ memories

@_event
@dataclass(frozen=True, kw_only=True)
class Written(KernelEvent):
    type: ClassVar[str] = "written"
    version: int
    trust: str
    operation: str | None = field(default=None, metadata=_OPTIONAL)  # set by ingest


@_event
@dataclass(frozen=True, kw_only=True)
class Updated(KernelEvent):
    type: ClassVar[str] = "updated"
    version: int
    operation: str | None = field(default=None, metadata=_OPTIONAL)  # set by ingest


@dataclass(frozen=True, kw_only=True)
class _Transition(KernelEvent):
    version: int
    rule: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Deleted(_Transition):
    type: ClassVar[str] = "deleted"


@_event
@dataclass(frozen=True, kw_only=True)
class Archived(_Transition):
    type: ClassVar[str] = "archived"


@_event
@dataclass(frozen=True, kw_only=True)
class Restored(_Transition):
    type: ClassVar[str] = "restored"


@_event
@dataclass(frozen=True, kw_only=True)
class Purged(KernelEvent):
    type: ClassVar[str] = "purged"
    versions: int
    rule: str | None
    at: float


@_event
@dataclass(frozen=True, kw_only=True)
class Stale(KernelEvent):
    """A memory derived from ``source`` no longer reflects it (a new version of the source, or its purge)."""

    type: ClassVar[str] = "stale"
    source: str
    source_version: int | None = field(default=None, metadata=_OPTIONAL)
    purged: bool | None = field(default=None, metadata=_OPTIONAL)
    base_model: str | None = field(default=None, metadata=_OPTIONAL)  # an adapter that failed its re-evaluation on it


@_event
@dataclass(frozen=True, kw_only=True)
class RolledBack(KernelEvent):
    type: ClassVar[str] = "rolled_back"
    version: int
    to_version: int
    rebuilt: bool = False  # the target version's activation cache was rebuilt (it had been evicted)


@_event
@dataclass(frozen=True, kw_only=True)
class Linked(KernelEvent):
    type: ClassVar[str] = "linked"
    target: str
    relation: str


@_event
@dataclass(frozen=True, kw_only=True)
class Fused(KernelEvent):
    type: ClassVar[str] = "fused"
    sources: list[str]
    rule: str | None = field(default=None, metadata=_OPTIONAL)  # merge: the policy rule, and by="meaning"
    by: str | None = field(default=None, metadata=_OPTIONAL)


@_event
@dataclass(frozen=True, kw_only=True)
class Pinned(KernelEvent):
    type: ClassVar[str] = "pinned"
    rule: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Unpinned(KernelEvent):
    type: ClassVar[str] = "unpinned"
    rule: str | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class Compressed(KernelEvent):
    type: ClassVar[str] = "compressed"
    sources: list[str]
    rule: str | None
    kept: bool
    summariser: str


@_event
@dataclass(frozen=True, kw_only=True)
class Ingested(KernelEvent):
    type: ClassVar[str] = "ingested"
    extractor: str
    messages: int
    add: int = 0
    update: int = 0
    invalidate: int = 0
    noop: int = 0


@_event
@dataclass(frozen=True, kw_only=True)
class Superseded(KernelEvent):
    type: ClassVar[str] = "superseded"
    version: int
    by: str


# ------------------------------------------------------------------------------------------------ kinds and the model

@_event
@dataclass(frozen=True, kw_only=True)
class Migrated(KernelEvent):
    type: ClassVar[str] = "migrated"
    frm: str
    to: str
    rule: str | None
    version: int
    tokens: int | None = field(default=None, metadata=_OPTIONAL)  # to activation: the cache's tokens and bytes
    bytes: int | None = field(default=None, metadata=_OPTIONAL)
    compression: str | None = field(default=None, metadata=_OPTIONAL)  # a compressed cache: its method
    kept_tokens: int | None = field(default=None, metadata=_OPTIONAL)
    group: str | None = field(default=None, metadata=_OPTIONAL)  # an episodic cache: its name and sources in order
    members: tuple[str, ...] | None = field(default=None, metadata=_OPTIONAL)
    restored: int | None = field(default=None, metadata=_OPTIONAL)  # parametric -> plaintext: sources made active
    stand_ins: int | None = field(default=None, metadata=_OPTIONAL)  # and generated stand-ins for deleted ones


@_event
@dataclass(frozen=True, kw_only=True)
class Evicted(KernelEvent):
    """An activation cache left a tier: ``disk`` (demoted to plaintext, or a kept cache of older ``versions``
    deleted: ``kept``) or ``ram`` (the model host's LRU)."""

    type: ClassVar[str] = "evicted"
    tier: str
    reason: str | None
    version: int | None = field(default=None, metadata=_OPTIONAL)
    versions: list[int] | None = field(default=None, metadata=_OPTIONAL)
    kept: bool | None = field(default=None, metadata=_OPTIONAL)


@_event
@dataclass(frozen=True, kw_only=True)
class MigrationRolledBack(KernelEvent):
    type: ClassVar[str] = "migration_rolled_back"
    journal: int


@_event
@dataclass(frozen=True, kw_only=True)
class Distilled(KernelEvent):
    type: ClassVar[str] = "distilled"
    rule: str | None
    sources: int
    version: int
    recall_with: float | None = None
    recall_without: float | None = None
    locality_delta: float | None = None
    bytes: int | None = None
    adopted: bool = True  # the evaluation passed the distillation's gate (docs/parametric.md, "Adoption")
    reasons: tuple[str, ...] = ()  # why it was not adopted
    # [step, loss] of the training, at most LOSS_POINTS of them (evenly thinned, the last kept): `memos report`
    loss_curve: list[list[float]] | None = field(default=None, metadata=_OPTIONAL)


#: How many points of a distillation's loss curve its ``distilled`` event keeps.
LOSS_POINTS = 200


def thin_curve(curve: Sequence[Sequence[float]], points: int = LOSS_POINTS) -> list[list[float]]:
    """At most ``points`` of ``curve`` ([step, loss] pairs), evenly spaced, the first and the last always kept."""
    pairs = [[float(s), float(v)] for s, v in curve]
    if len(pairs) <= points:
        return pairs
    stride = (len(pairs) - 1) / (points - 1)
    return [pairs[round(i * stride)] for i in range(points)]


@_event
@dataclass(frozen=True, kw_only=True)
class Reevaluated(KernelEvent):
    """An adapter was evaluated again on a new base model (docs/parametric.md, "A new base model")."""

    type: ClassVar[str] = "reevaluated"
    rule: str | None
    version: int
    adopted: bool
    reasons: tuple[str, ...] = ()
    recall_with: float | None = None
    locality_delta: float | None = None


@_event
@dataclass(frozen=True, kw_only=True)
class ActivationUsed(KernelEvent):
    type: ClassVar[str] = "activation_used"
    tier: str


@_event
@dataclass(frozen=True, kw_only=True)
class AdapterUsed(KernelEvent):
    type: ClassVar[str] = "adapter_used"
    stale: bool


# ------------------------------------------------------------------------------------------------ jobs and policies

@_event
@dataclass(frozen=True, kw_only=True)
class JobFailed(KernelEvent):
    """A long operation failed: a kernel job (``job`` set) or a policy's action (``policy`` and ``rule`` set)."""

    type: ClassVar[str] = "job_failed"
    op: str
    code: str
    message: str
    memories: list[str]
    job: str | None = field(default=None, metadata=_OPTIONAL)
    policy: str | None = field(default=None, metadata=_OPTIONAL)
    rule: str | None = field(default=None, metadata=_OPTIONAL)


@_event
@dataclass(frozen=True, kw_only=True)
class PolicyFired(KernelEvent):
    """A policy evaluation that planned actions, with their outcomes."""

    type: ClassVar[str] = "policy_fired"
    policy: str
    planned: int = 0
    ok: int = 0
    failed: int = 0
    not_executed: int = 0
    duration_ms: float = 0.0
    rules: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ samples

@_event
@dataclass(frozen=True, kw_only=True)
class Sampled(KernelEvent):
    """What the kernel holds and how fast it answers, sampled over time (``memos.kernel.samples``; superusers only):
    the activation disk tier against its budget, and each op's syscall count and p95 latency (ms) over its last
    calls. ``memos report`` draws them."""

    type: ClassVar[str] = "sampled"
    activation_bytes: int
    activation_limit: int | None
    activation_memories: int
    syscalls: dict[str, int] = field(default_factory=dict)
    p95_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class OtherEvent(KernelEvent):
    """A stored event of a type this version does not know (written by a newer one): its fields as they are."""

    name: str
    fields_: dict[str, Any] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return dict(self.fields_)


def from_record(type_: str, cube: str | None, memory_id: str | None, principal: str | None,
                data: dict[str, Any]) -> KernelEvent:
    """The typed event of a stored or wire event (``memos.types.Event``: ``from_record(e.type, e.cube, e.memory_id,
    e.principal, e.data)``). Fields the type does not have are ignored; an unknown type is an ``OtherEvent``."""
    cls = TYPES.get(type_)
    if cls is None:
        return OtherEvent(cube=cube, memory_id=memory_id, principal=principal, name=type_, fields_=dict(data))
    known = {f.name for f in fields(cls)} - set(_ENVELOPE)
    try:
        return cls(cube=cube, memory_id=memory_id, principal=principal, **{k: v for k, v in data.items() if k in known})
    except TypeError:  # a record missing a required field (written by an older version)
        return OtherEvent(cube=cube, memory_id=memory_id, principal=principal, name=type_, fields_=dict(data))


def type_of(event: KernelEvent) -> str:
    """The event's type name (``migrated``, ...), also for an ``OtherEvent``."""
    return event.name if isinstance(event, OtherEvent) else event.type
