"""The data model of memos: MemCube headers, provenance, cubes, and what syscalls return.

Everything here is a frozen pydantic model, JSON-serialisable, so that the same objects cross the in-process,
Ray and HTTP transports. Times are timezone-aware UTC datetimes in the API and float epoch seconds in storage.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

# ---------------------------------------------------------------------------------------------------------- names

# \Z, not $: "$" also matches before a trailing newline, which would make "team/x\n" a look-alike of "team/x".
CUBE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}(/[a-z0-9][a-z0-9_\-]{0,63}){0,7}\Z")
PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}\Z")
TAG_RE = re.compile(r"^[^\x00-\x1f\ud800-\udfff]{1,64}\Z")  # no control characters, no lone surrogates
EVERYONE = "*"
#: The largest integer SQLite stores: counters, versions and offsets above it are refused as invalid input.
SQL_INT_MAX = 2**63 - 1


def _check_cube_name(value: str) -> str:
    if not CUBE_NAME_RE.match(value):
        raise ValueError(
            f"invalid cube name {value!r}: use lowercase segments of [a-z0-9_-] separated by '/', "
            "e.g. 'team/research' (at most 8 segments of 64 characters)"
        )
    return value


def _check_principal(value: str) -> str:
    if value != EVERYONE and not PRINCIPAL_RE.match(value):
        raise ValueError(f"invalid principal {value!r}: use [A-Za-z0-9_.:@-], e.g. 'agent:writer', at most 128 characters")
    return value


def _check_tag(value: str) -> str:
    if not TAG_RE.match(value):
        raise ValueError(f"invalid tag {value!r}: 1-64 characters, no control characters")
    return value


CubeName = Annotated[str, AfterValidator(_check_cube_name)]
Principal = Annotated[str, AfterValidator(_check_principal)]
Tag = Annotated[str, AfterValidator(_check_tag)]
MemoryId = Annotated[str, Field(pattern=r"^m_[0-9a-f]{16,32}$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def from_epoch(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


# ---------------------------------------------------------------------------------------------------------- enums


class Kind(StrEnum):
    """What a MemCube's payload is."""

    PLAINTEXT = "plaintext"
    ACTIVATION = "activation"
    PARAMETRIC = "parametric"


class State(StrEnum):
    """Lifecycle state of a version: ``active -> archived -> deleted`` (tombstone)."""

    ACTIVE = "active"
    ARCHIVED = "archived"
    DELETED = "deleted"


class Source(StrEnum):
    """Where a memory came from. ``generated`` is a model's own output (an agent's answer): always untrusted, and
    search ranks it below what was observed (``GENERATED_WEIGHT``)."""

    CONVERSATION = "conversation"
    TOOL = "tool"
    DOCUMENT = "document"
    DERIVED = "derived"
    SYSTEM = "system"
    GENERATED = "generated"


class Trust(StrEnum):
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"


#: Sources whose memories are untrusted unless the writer says otherwise; ``generated`` ones are untrusted always.
UNTRUSTED_SOURCES = frozenset({Source.TOOL, Source.DOCUMENT, Source.GENERATED})


def initial_trust(source: Source, requested: Trust | None) -> Trust:
    """The trust a new memory from ``source`` gets before its parents are weighed: what the writer asks, else by
    source; a model's own output (``generated``) is untrusted whatever the writer asks."""
    if source == Source.GENERATED:
        return Trust.UNTRUSTED
    return requested or (Trust.UNTRUSTED if source in UNTRUSTED_SOURCES else Trust.TRUSTED)


#: A generated memory's fused search score is multiplied by this: an observed fact of equal relevance comes first.
GENERATED_WEIGHT = 0.5


class Right(StrEnum):
    """Rights on a cube; each implies the ones before it (read < write < admin)."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def level(self) -> int:
        return _RIGHT_LEVEL[self]

    def implies(self, other: Right) -> bool:
        return self.level >= other.level


_RIGHT_LEVEL = {Right.READ: 1, Right.WRITE: 2, Right.ADMIN: 3}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------------------------------------------------- header


class MemoryRef(_Frozen):
    """A memory at an exact version."""

    id: MemoryId
    version: int = Field(ge=1, le=SQL_INT_MAX)


class Provenance(_Frozen):
    """Who made a version, from what, and how. ``trust`` is inherited as the weakest of ``derived_from``'s."""

    author: Principal
    source: Source = Source.CONVERSATION
    source_refs: tuple[str, ...] = ()
    derived_from: tuple[MemoryRef, ...] = ()
    operation: str = "write"
    policy_rule: str | None = None
    trust: Trust = Trust.TRUSTED


class Fingerprint(_Frozen):
    """What an activation or parametric payload is valid for. Compared field by field before any use."""

    model_id: str
    config_hash: str
    tokenizer_hash: str
    dtype: str


class PayloadRef(_Frozen):
    """A blob under the data dir (safetensors), checked by sha256 on load."""

    path: str
    sha256: str
    size_bytes: int
    format: str = "safetensors"


def _string_or_object_schema(schema: dict[str, Any]) -> None:
    mapping = dict(schema)
    schema.clear()
    schema["anyOf"] = [{"type": "string", "description": "e.g. int8, snapkv@0.5, int8+sink_window@0.5"}, mapping]


KVQuantize = Literal["none", "int8", "int4", "int2", "k8v4", "k8v2"]
KVSelect = Literal["none", "sink_window", "heavy_hitter", "snapkv"]
_KV_QUANTIZE = ("none", "int8", "int4", "int2", "k8v4", "k8v2")
_KV_SELECT = ("none", "sink_window", "heavy_hitter", "snapkv")


class KVCompression(_Frozen):
    """How an activation memory's KV cache is compressed; recorded in its payload (docs/activation.md, "Compression").

    Two independent parts, combinable:

    - ``quantize``: ``"none"`` keeps the model's dtype; ``"int8"`` stores symmetric int8 with a float32 scale per
      channel for keys (per head and channel, over the tokens: keys have outlier channels) and per token for values
      (per head and token, over the channels), as in KIVI. ``"int4"`` / ``"int2"`` (KIVI proper): asymmetric
      4- or 2-bit codes packed into bytes, keys per channel in groups of ``group`` tokens, values per token in groups
      of ``group`` channels (a float16 scale and minimum per group), while the first ``sink`` and the last ``recent``
      kept entries (the attention sinks and a residual window) stay in the model's dtype. ``"k8v4"`` / ``"k8v2"``: the same
      with 8-bit keys and 4- or 2-bit values (keys, which pass through the softmax, are the sensitive half).
    - ``select``: which tokens' entries are kept. ``"none"``: all. ``"sink_window"`` (StreamingLLM): the first
      ``sink`` tokens and the most recent ones. ``"heavy_hitter"`` (H2O): the tokens that received the most attention,
      summed over every query of the prefill. ``"snapkv"`` (SnapKV): the tokens the last ``observe`` tokens of the
      block attended to most, pooled over ``pool`` neighbours. The two attention methods choose per layer and key-value
      head and always keep the ``sink`` first and the ``recent`` last tokens (SnapKV also its observation window).
      ``keep`` is the fraction of the block's tokens kept (at least the always-kept ones).

    A string is accepted wherever this model is: parts joined by ``+``, a selection optionally with ``@keep``, e.g.
    ``"none"``, ``"int8"``, ``"snapkv@0.25"``, ``"int8+sink_window@0.5"`` (other fields at their defaults).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_string_or_object_schema)

    quantize: KVQuantize = "none"
    select: KVSelect = "none"
    keep: float = Field(default=0.5, gt=0.0, le=1.0)
    sink: int = Field(default=4, ge=0, le=1 << 20)
    recent: int = Field(default=16, ge=0, le=1 << 20)
    observe: int = Field(default=32, ge=1, le=1 << 20)
    pool: int = Field(default=7, ge=1, le=63)
    group: int = Field(default=32, ge=1, le=4096)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return cls.parse_spec(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _odd_pool(self) -> KVCompression:
        if self.pool % 2 == 0:
            raise ValueError(f"pool must be odd (a centred window), got {self.pool}")
        return self

    @staticmethod
    def parse_spec(spec: str) -> dict[str, Any]:
        """The fields a compression string names (see the class docstring).

        Raises:
            ValueError: an unknown part, two quantisations or selections, or a bad ``@keep``.
        """
        fields: dict[str, Any] = {}
        for part in spec.strip().lower().split("+"):
            name, _, keep = part.strip().partition("@")
            if name == "none" and not keep:
                continue
            key = "quantize" if name in _KV_QUANTIZE else "select" if name in _KV_SELECT else None
            if key is None or (keep and key == "quantize"):
                raise ValueError(
                    f"unknown compression part {part!r} in {spec!r}: use none, {', '.join(_KV_QUANTIZE[1:])}, "
                    f"{', '.join(_KV_SELECT[1:])} (a selection may end in @keep, e.g. snapkv@0.25), joined by '+'"
                )
            if key in fields:
                raise ValueError(f"compression {spec!r} names two {key} methods")
            fields[key] = name
            if keep:
                try:
                    fields["keep"] = float(keep)
                except ValueError:
                    raise ValueError(f"keep in {part!r} must be a number in (0, 1]") from None
        return fields

    @property
    def is_none(self) -> bool:
        """True when the cache is stored as the model computed it (what a full prefill gives)."""
        return self.quantize == "none" and self.select == "none"

    @property
    def method(self) -> str:
        """A short name, e.g. ``"int8+snapkv@0.25"`` (``parse_spec`` reads it back)."""
        parts = [self.quantize] if self.quantize != "none" else []
        if self.select != "none":
            parts.append(f"{self.select}@{self.keep:g}")
        return "+".join(parts) or "none"


class Memory(_Frozen):
    """One version of a MemCube: the header and, for plaintext, the text itself.

    ``content`` always holds the plaintext knowledge, also for activation and parametric cubes, so that demotion
    never loses it. ``reads``/``last_read_at``/``pinned`` are current usage facts of the memory, not of the version.
    """

    id: MemoryId
    cube: CubeName
    kind: Kind = Kind.PLAINTEXT
    version: int = Field(ge=1)
    state: State = State.ACTIVE
    pinned: bool = False
    content: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()
    provenance: Provenance
    content_hash: str
    created_at: datetime
    updated_at: datetime
    reads: int = 0
    last_read_at: datetime | None = None
    size_bytes: int = 0
    fingerprint: Fingerprint | None = None
    payload: PayloadRef | None = None
    stale: bool = False

    @property
    def ref(self) -> MemoryRef:
        return MemoryRef(id=self.id, version=self.version)


class Link(_Frozen):
    source: MemoryId
    target: MemoryId
    relation: str
    author: Principal
    created_at: datetime


class Grant(_Frozen):
    principal: Principal
    right: Right


class CubeInfo(_Frozen):
    name: CubeName
    owner: Principal
    description: str = ""
    created_at: datetime
    grants: tuple[Grant, ...] = ()
    memories: dict[str, int] = Field(default_factory=dict)  # state -> count of current versions
    bytes: int = 0
    # This life of the name: a cube dropped and created again is a new incarnation, with its own audit log and events.
    incarnation: str | None = None


# ---------------------------------------------------------------------------------------------------------- results


class SearchHit(_Frozen):
    """A search result. ``score`` is the fused score; the per-retriever ranks say why it was found, and ``via`` how
    a hit added by link expansion is linked to the hit that brought it (``same_session of m_...``)."""

    memory: Memory
    score: float
    dense_rank: int | None = None
    lexical_rank: int | None = None
    via: str | None = None


class SearchResult(_Frozen):
    hits: tuple[SearchHit, ...]


class ShardCandidates(_Frozen):
    """One shard's candidates for a search over cubes on several shards (``Search(shard_phase="candidates")``):
    each retriever's (rowid, raw score) best first (cosine distance; bm25, lower is better), what fusion reads of
    every candidate and session neighbour by rowid (``memos.kernel.retrieval.Candidate.wire``), each passing
    candidate's session neighbours (rowids) by memory id, and what bm25 needs to score the lexical candidates over
    several shards' statistics."""

    dense: tuple[tuple[int, float], ...]
    lexical: tuple[tuple[int, float], ...]
    pool: dict[int, dict[str, Any]]
    neighbours: dict[str, list[int]]
    lexical_stats: dict[str, Any] | None = None  # memos.storage.sqlite.SqliteStore.lexical_stats of the lexical ones


class MemoryList(_Frozen):
    memories: tuple[Memory, ...]


class CubeList(_Frozen):
    cubes: tuple[CubeInfo, ...]


class Ack(_Frozen):
    """Acknowledges a syscall with no richer result; returned only after its transaction committed."""

    ok: bool = True
    detail: str = ""


class Event(_Frozen):
    seq: int
    at: datetime
    type: str
    cube: str | None = None
    memory_id: str | None = None
    principal: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    incarnation: str | None = None  # of ``cube`` when the event was recorded


class EventList(_Frozen):
    events: tuple[Event, ...]
    next_seq: int | str  # a str over kernel shards: each shard's position (memos.syscalls.ShardCursor)


class AuditRecord(_Frozen):
    seq: int
    at: datetime
    principal: str
    op: str
    cube: str | None
    memory_id: str | None
    outcome: str  # "ok" or an error code
    detail: str = ""
    incarnation: str | None = None  # of ``cube`` when the record was written


class AuditList(_Frozen):
    records: tuple[AuditRecord, ...]
    next_since: int | str = 0  # the cursor of the next page (a str over kernel shards: memos.syscalls.ShardCursor)


class Stats(_Frozen):
    """Counts over the cubes the principal may read."""

    cubes: int
    memories: dict[str, dict[str, int]]  # kind -> state -> count (current versions)
    versions: int
    bytes: dict[str, int]  # kind -> bytes of current versions
    # Server-wide for superusers; for anyone else, of the readable cubes only (memos.kernel.callstats).
    syscalls: dict[str, int] = Field(default_factory=dict)  # op -> count since start (this kernel process)
    latency_ms: dict[str, dict[str, float]] = Field(default_factory=dict)  # op -> {p50, p95} of its recent calls


class Job(_Frozen):
    """A long operation (``migrate`` to activation, ``distill``) while it runs and for a while after it ended.

    Jobs live in the kernel process (``jobs`` lists them, ``cancel`` stops one); what survives a restart is the
    migration journal, not the job. ``step``/``total`` count memories for a migration and optimiser steps, then
    evaluation batches, for a distillation (``phase`` says which).
    """

    id: str
    op: str
    principal: str
    cubes: tuple[str, ...]
    memory_ids: tuple[str, ...]  # the memories it works on (a distillation: its sources)
    target: str | None = None  # the memory it will create or change (a distillation: the new parametric memory)
    rule: str | None = None  # the policy rule that started it, if any
    state: Literal["running", "done", "cancelled", "failed"] = "running"
    phase: str = ""
    step: int = 0
    total: int = 0
    loss: float | None = None
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    cancel_requested_by: str | None = None
    error: str | None = None  # "code: message" of a failed or cancelled job


class JobList(_Frozen):
    jobs: tuple[Job, ...]


# ---------------------------------------------------------------------------------------------------------- distill


class DistillRecipe(_Frozen):
    """How to train an adapter: overrides of the model host's default recipe (``memos.models.distill.LoraConfig``,
    docs/parametric.md); a field left None keeps the default. The recipe used is stored in the adapter's header."""

    rank: int | None = Field(default=None, ge=1, le=256)
    alpha: float | None = Field(default=None, gt=0, le=4096)
    target_modules: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] | None = Field(
        default=None, min_length=1, max_length=16
    )
    top_layers: float | None = Field(default=None, gt=0.0, le=1.0)
    epochs: int | None = Field(default=None, ge=1, le=1000)
    steps: int | None = Field(default=None, ge=1, le=100_000)
    learning_rate: float | None = Field(default=None, gt=0, le=1.0)
    batch_size: int | None = Field(default=None, ge=1, le=1024)
    replay_weight: float | None = Field(default=None, ge=0, le=1000)
    dtype: Literal["float32", "bfloat16"] | None = None
    early_stop: bool | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    teacher: Literal["text", "context"] | None = None
    pack: bool | None = None

    def overrides(self) -> dict[str, Any]:
        """The fields set, as the model host's recipe takes them."""
        return self.model_dump(mode="json", exclude_none=True)


class AdoptionGate(_Frozen):
    """What an adapter's evaluation must show for the adapter to be *adopted*: used by ``assemble_context`` and
    ``generate`` in place of its sources. A distillation that misses it is stored, not adopted, with the reasons.

    Attributes:
        min_recall: closed-book recall with the adapter on the trained question phrasings.
        min_held_out_recall: the same on held-out phrasings (not checked when a distillation has none).
        max_locality_delta: how many nats the model's mean token loss on unrelated general text may rise.
    """

    min_recall: float = Field(default=0.9, ge=0.0, le=1.0)
    min_held_out_recall: float = Field(default=0.6, ge=0.0, le=1.0)
    max_locality_delta: float = Field(default=0.1, ge=-10.0, le=10.0)

    def misses(self, evaluation: dict[str, Any]) -> tuple[str, ...]:
        """Why ``evaluation`` (``memos.models.distill.Evaluation`` as JSON) misses the gate; empty when it passes."""
        reasons = []
        recall, held, delta = (evaluation.get(k) for k in ("recall_with", "held_out_recall_with", "locality_delta"))
        if recall is None or recall < self.min_recall:
            reasons.append(f"recall {_share(recall)} is below {self.min_recall:.0%}")
        if held is not None and held < self.min_held_out_recall:
            reasons.append(f"held-out recall {_share(held)} is below {self.min_held_out_recall:.0%}")
        if delta is None or delta > self.max_locality_delta:
            shown = "unknown" if delta is None else f"{delta:+.3f}"
            reasons.append(f"locality delta {shown} nats is above {self.max_locality_delta:+.3f}")
        return tuple(reasons)


def _share(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0%}"


# ---------------------------------------------------------------------------------------------------------- context


class ChatMessage(_Frozen):
    role: str = Field(pattern=r"^(system|user|assistant)$")
    content: str = Field(max_length=32 * 1024)


class ContextItem(_Frozen):
    """One memory the request-time scheduler considered, and what it decided."""

    memory_id: str
    version: int
    kind: Kind
    # "kv" (inject its activation cache), "text" (its text in the prompt), "adapter" (apply its LoRA), "covered" (a
    # source of the applied adapter: the adapter stands in for its text) or "skip"
    use: str
    # prefill tokens it costs (0 for "kv": they are cached, but count against the budget; for "covered": the tokens
    # it saved)
    tokens: int
    cached_tokens: int = 0
    score: float
    reason: str


class ContextPlan(_Frozen):
    """What ``assemble_context`` chose for a query within a token budget, and why."""

    query: str
    token_budget: int
    items: tuple[ContextItem, ...]
    text_tokens: int
    cached_tokens: int
    estimated: bool = False  # token counts are estimates (no model host to count with)
    adapter: str | None = None  # the parametric memory applied, if any
    warnings: tuple[str, ...] = ()  # e.g. a memory named with memory=[id] that did not fit the budget
    covered: tuple[str, ...] = ()  # memories the adapter stands in for (its sources, at their current versions)
    saved_tokens: int = 0  # prompt tokens the covered memories would have cost as text

    @property
    def used(self) -> tuple[ContextItem, ...]:
        return tuple(i for i in self.items if i.use != "skip")


class GenerateResult(_Frozen):
    text: str
    finish_reason: str
    plan: ContextPlan | None
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    total_s: float


class KernelState(_Frozen):
    """A read-only picture of the kernel for the policy engine: current headers, recent read times, tier usage."""

    at: datetime
    memories: tuple[Memory, ...]
    read_times: dict[str, tuple[float, ...]]  # memory id -> epoch seconds of its reads within the window
    activation_bytes: int = 0
    loaded_adapters: int = 0


class WriteOutcome(_Frozen):
    """One item of a ``write_many``: the memory written (``id`` at ``version`` 1), or why this item was not written
    (``error`` as on the wire: code, message, details). Exactly one of the two is set."""

    id: MemoryId | None = None
    version: int | None = None
    error: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class WriteManyResult(_Frozen):
    """The outcomes of a ``write_many``, in the order of its items."""

    results: tuple[WriteOutcome, ...]
    written: int
    failed: int


# ---------------------------------------------------------------------------------------------------------- ingest


class ConversationMessage(_Frozen):
    """One message given to ``ingest``. ``id`` is its reference (it becomes the ``source_refs`` of what is
    extracted from it; default ``msg:<position>``); ``speaker`` names who said it (default: the role); ``at`` is when
    it was said (relative dates in it are resolved against it); ``session`` groups messages of one sitting."""

    id: str | None = Field(default=None, min_length=1, max_length=512)
    role: str = Field(default="user", pattern=r"^(system|user|assistant|tool)$")
    speaker: str | None = Field(default=None, min_length=1, max_length=128)
    content: str = Field(max_length=32 * 1024)
    at: datetime | None = None
    session: str | None = Field(default=None, max_length=128)


class IngestDecision(_Frozen):
    """What ``ingest`` decided for one extracted fact, and why.

    ``memory``: the memory version the decision wrote (add, invalidate: the new memory; update: the new version of
    the target), None for noop and in a dry run. ``target``: the existing memory version the fact was compared with
    and acted on (update: the version it replaced; invalidate: the version it superseded; noop: the one that already
    says it)."""

    action: Literal["add", "update", "invalidate", "noop"]
    text: str
    reason: str
    source_refs: tuple[str, ...] = ()
    memory: MemoryRef | None = None
    target: MemoryRef | None = None


class IngestResult(_Frozen):
    extractor: str  # the language-model backend that extracted the facts (e.g. "rules")
    decisions: tuple[IngestDecision, ...]
    dry_run: bool = False

    def counts(self) -> dict[str, int]:
        out = {"add": 0, "update": 0, "invalidate": 0, "noop": 0}
        for d in self.decisions:
            out[d.action] += 1
        return out


class RelatedMemory(_Frozen):
    """A memory linked to another, and how: ``relation`` is a stored link's relation (``supersedes``, ...), or
    ``derived_from``/``derived`` (provenance), ``same_session`` (the next or previous memory of the session) or
    ``same_subject`` (same speaker or subject in metadata); ``direction`` is ``out`` or ``in`` for stored links."""

    memory: Memory
    relation: str
    direction: Literal["out", "in", "both"] = "out"


class LinkElsewhere(_Frozen):
    """A memory linked to the one asked about that is not on the kernel that answered (over kernel shards: on
    another shard, since a cube move; or purged). ``position``: how many of ``related`` come before it. The shard
    router resolves these on the other shards (``memos.transports.router``); a client of one kernel may ignore
    them."""

    position: int
    id: str
    relation: str
    direction: Literal["out", "in", "both"] = "out"


class RelatedList(_Frozen):
    related: tuple[RelatedMemory, ...]
    elsewhere: tuple[LinkElsewhere, ...] = ()
