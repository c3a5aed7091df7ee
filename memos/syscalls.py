"""Syscalls are data: one frozen pydantic model per call, in one closed, discriminated union.

The kernel has a single entry, ``Kernel.execute(principal, syscall)``; the client's friendly methods only build these
objects, and policies emit them. The author of anything written is always the calling principal: no syscall carries a
principal of its own to be trusted. ``parse_syscall`` turns wire data (JSON dicts) into a syscall, translating
pydantic's errors into ``InvalidSyscall`` that names the offending field.

Each syscall class names its ``result_type``. The rights a syscall needs are checked by its handler in
``memos.kernel.ops`` (through ``memos.kernel.authz``), which knows what the call touches (a memory's cube, each
source, a job's cubes); docs/syscalls.md lists them. (A declared ``right`` per class was never read and disagreed
with the kernel for ``cancel``; it is gone.)
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from memos.errors import InvalidSyscall
from memos.types import (
    SQL_INT_MAX,
    Ack,
    AdoptionGate,
    AuditList,
    ChatMessage,
    ContextPlan,
    ConversationMessage,
    CubeInfo,
    CubeList,
    CubeName,
    DistillRecipe,
    EventList,
    GenerateResult,
    IngestResult,
    Job,
    JobList,
    KernelState,
    Kind,
    KVCompression,
    Memory,
    MemoryId,
    MemoryList,
    MemoryRef,
    Principal,
    RelatedList,
    Right,
    SearchResult,
    Source,
    State,
    Stats,
    Tag,
    Trust,
    WriteManyResult,
)

#: Documented input limits (docs/syscalls.md). Content above MAX_CONTENT_BYTES raises PayloadTooLarge.
MAX_CONTENT_BYTES = 32 * 1024
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 6
MAX_TAGS = 32
MAX_QUERY_CHARS = 4096
MAX_K = 200
MAX_BATCH = 256
#: Items of one ``write_many`` (one transaction, one fsync, one vector-index call).
MAX_WRITE_MANY = 1000


def _json_object(value: dict[str, Any]) -> dict[str, Any]:
    try:
        json.dumps(value, allow_nan=False)
    except RecursionError as exc:  # pydantic turns only ValueError and AssertionError into validation errors
        raise ValueError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON (strings, finite numbers, booleans, lists, objects): {exc}") from exc
    return value


#: Metadata is JSON: checked when the syscall is built, so non-finite numbers never reach the wire as null.
JsonObject = Annotated[dict[str, Any], AfterValidator(_json_object)]


class _Syscall(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    result_type: ClassVar[type[BaseModel]] = Ack


class CreateCube(_Syscall):
    """Create a namespace; the caller becomes its owner with ``admin``."""

    op: Literal["create_cube"] = "create_cube"
    name: CubeName
    description: str = Field(default="", max_length=1024)
    exist_ok: bool = False
    result_type: ClassVar[type[BaseModel]] = CubeInfo


class DropCube(_Syscall):
    """Remove a cube and purge every memory in it (needs ``admin``)."""

    op: Literal["drop_cube"] = "drop_cube"
    name: CubeName


class ListCubes(_Syscall):
    """The cubes the caller may read."""

    op: Literal["list_cubes"] = "list_cubes"
    result_type: ClassVar[type[BaseModel]] = CubeList


class GetCube(_Syscall):
    op: Literal["cube_info"] = "cube_info"
    name: CubeName
    result_type: ClassVar[type[BaseModel]] = CubeInfo


class Write(_Syscall):
    """Write a new plaintext memory (version 1). The author is the caller."""

    op: Literal["write"] = "write"
    cube: CubeName
    content: str
    metadata: JsonObject = Field(default_factory=dict)
    tags: tuple[Tag, ...] = Field(default=(), max_length=MAX_TAGS)
    source: Source = Source.CONVERSATION
    source_refs: tuple[Annotated[str, Field(max_length=512)], ...] = Field(default=(), max_length=64)
    derived_from: tuple[MemoryRef, ...] = Field(default=(), max_length=64)
    trust: Trust | None = None  # None: untrusted for tool/document sources, trusted otherwise
    # Client-generated (the Python client makes one per call): a retry with the same key, by the same principal,
    # after the write committed returns the memory it wrote instead of writing it again (kept for IDEMPOTENCY_KEEP_S).
    idempotency_key: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{8,128}$")
    result_type: ClassVar[type[BaseModel]] = Memory


class Read(_Syscall):
    """Read the current version, or ``version`` exactly. Counts as a use of the memory."""

    op: Literal["read"] = "read"
    id: MemoryId
    version: int | None = Field(default=None, ge=1, le=SQL_INT_MAX)
    result_type: ClassVar[type[BaseModel]] = Memory


class ListMemories(_Syscall):
    """Current versions of the memories in a cube, oldest first, ``limit`` at a time after ``offset``."""

    op: Literal["list"] = "list"
    cube: CubeName
    states: tuple[State, ...] = (State.ACTIVE,)
    tags: tuple[Tag, ...] = ()
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=SQL_INT_MAX)
    result_type: ClassVar[type[BaseModel]] = MemoryList


class SearchFilters(BaseModel):
    """Conjunctive filters. ``metadata`` matches top-level keys by equality."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tags: tuple[Tag, ...] = ()
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict)
    trust: Trust | None = None
    kinds: tuple[Kind, ...] = ()
    authors: tuple[Principal, ...] = ()
    sources: tuple[Source, ...] = ()


class ShardHit(BaseModel):
    """A hit the shard router chose on one shard (phase 2 of a search over several shards): the version's rowid on
    that shard, and the score and ranks fused over all of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rowid: int
    score: float
    dense_rank: int | None = None
    lexical_rank: int | None = None


class Search(_Syscall):
    """Hybrid search (dense + lexical, fused by reciprocal rank) over one or more cubes.

    With ``as_of`` the search sees each memory as it was at that instant (versions valid then, active then).
    With ``expand`` each hit brings up to that many memories linked to it (stored links, provenance, session
    neighbours, same subject; see ``related``) at a fraction of its score (``EXPAND_DECAY``); not with ``as_of``.
    Hits count as uses of the memories returned.
    """

    op: Literal["search"] = "search"
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    cubes: tuple[CubeName, ...] = Field(min_length=1, max_length=64)
    k: int = Field(default=10, ge=1, le=MAX_K)
    filters: SearchFilters = SearchFilters()
    as_of: datetime | None = None
    mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    # Link expansion: each hit may bring up to ``expand`` memories linked to it (``related``), scored below it.
    expand: int = Field(default=0, ge=0, le=8)
    # Set by the shard router (memos.transports.router) for a search over cubes on several shards, fused once:
    # "candidates" answers this shard's candidates (ShardCandidates), "hits" the hits it chose here (shard_hits).
    shard_phase: Literal["candidates", "hits"] | None = None
    shard_hits: tuple[ShardHit, ...] = Field(default=(), max_length=MAX_K)
    result_type: ClassVar[type[BaseModel]] = SearchResult


class Update(_Syscall):
    """Write version n+1 with the given fields changed. ``expected_version`` makes it conditional."""

    op: Literal["update"] = "update"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    content: str | None = None
    metadata: JsonObject | None = None
    tags: tuple[Tag, ...] | None = Field(default=None, max_length=MAX_TAGS)
    expected_version: int | None = Field(default=None, ge=1)
    source_refs: tuple[Annotated[str, Field(max_length=512)], ...] = Field(default=(), max_length=64)
    result_type: ClassVar[type[BaseModel]] = Memory


class Delete(_Syscall):
    """Tombstone: a new version in state ``deleted``. History stays; search no longer finds it."""

    op: Literal["delete"] = "delete"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    expected_version: int | None = Field(default=None, ge=1)
    result_type: ClassVar[type[BaseModel]] = Memory


class Purge(_Syscall):
    """Hard delete: every version of the memory, its index entries and its payload files are erased; memories
    derived from it are marked stale. Only the audit log and event log keep that it existed (ids, no content)."""

    op: Literal["purge"] = "purge"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId


class Archive(_Syscall):
    """A new version in state ``archived``: kept and readable, out of default search."""

    op: Literal["archive"] = "archive"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    expected_version: int | None = Field(default=None, ge=1)
    result_type: ClassVar[type[BaseModel]] = Memory


class Restore(_Syscall):
    """Bring a deleted or archived memory back to ``active`` as a new version."""

    op: Literal["restore"] = "restore"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    result_type: ClassVar[type[BaseModel]] = Memory


class History(_Syscall):
    """Every version of a memory, oldest first, each with its provenance."""

    op: Literal["history"] = "history"
    id: MemoryId
    result_type: ClassVar[type[BaseModel]] = MemoryList


class Rollback(_Syscall):
    """Write version n+1 whose content, metadata and tags equal those of ``to_version``."""

    op: Literal["rollback"] = "rollback"
    id: MemoryId
    to_version: int = Field(ge=1, le=SQL_INT_MAX)
    expected_version: int | None = Field(default=None, ge=1)
    result_type: ClassVar[type[BaseModel]] = Memory


class LinkMemories(_Syscall):
    """A typed, directed edge between two memories (write on the source's cube, read on the target's)."""

    op: Literal["link"] = "link"
    source: MemoryId
    target: MemoryId
    relation: str = Field(default="related", pattern=r"^[a-z][a-z0-9_\-]{0,63}$")


class Fuse(_Syscall):
    """Merge several memories into a new one in ``cube`` whose provenance derives from their current versions.

    The caller writes the fused ``content`` (an agent or a policy summarises); the sources are archived unless
    ``keep_sources``. Trust is the weakest of the sources'.
    """

    op: Literal["fuse"] = "fuse"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    ids: tuple[MemoryId, ...] = Field(min_length=2, max_length=64)
    cube: CubeName
    content: str
    tags: tuple[Tag, ...] = Field(default=(), max_length=MAX_TAGS)
    metadata: JsonObject = Field(default_factory=dict)
    keep_sources: bool = False
    result_type: ClassVar[type[BaseModel]] = Memory


class Pin(_Syscall):
    """Pinned memories are never archived, decayed or evicted by policies."""

    op: Literal["pin"] = "pin"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    result_type: ClassVar[type[BaseModel]] = Memory


class Unpin(_Syscall):
    op: Literal["unpin"] = "unpin"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    result_type: ClassVar[type[BaseModel]] = Memory


class GrantRight(_Syscall):
    """Give ``principal`` (or ``*``, everyone) a right on a cube. Needs ``admin``."""

    op: Literal["grant"] = "grant"
    cube: CubeName
    principal: Principal
    right_: Right = Field(alias="right")
    result_type: ClassVar[type[BaseModel]] = CubeInfo

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True)


class RevokeRight(_Syscall):
    """Remove every right ``principal`` has on a cube. The owner's admin right cannot be revoked."""

    op: Literal["revoke"] = "revoke"
    cube: CubeName
    principal: Principal
    result_type: ClassVar[type[BaseModel]] = CubeInfo


class GetStats(_Syscall):
    op: Literal["stats"] = "stats"
    result_type: ClassVar[type[BaseModel]] = Stats


#: An event cursor over kernel shards: ``shards:`` and each shard's sequence number, in shard order.
ShardCursor = Annotated[str, Field(pattern=r"^shards:\d+(,\d+)*$", max_length=5200)]


class GetEvents(_Syscall):
    """Kernel events after ``since`` (a sequence number), only for cubes the caller may read; only of the given
    ``types`` when some are given. Oldest first; with ``latest``, the newest ``limit`` of them (still in order), as
    ``tail`` shows the end of a log. Over kernel shards (``memos.transports.router``) the cursor is a
    ``ShardCursor`` (each shard's position; pass back the ``next_seq`` you were given), and the events of all
    shards come merged by time."""

    op: Literal["events"] = "events"
    since: Annotated[int, Field(ge=0, le=SQL_INT_MAX)] | ShardCursor = 0
    limit: int = Field(default=100, ge=1, le=1000)
    cubes: tuple[CubeName, ...] = ()
    types: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = Field(default=(), max_length=32)
    latest: bool = False
    result_type: ClassVar[type[BaseModel]] = EventList


class GetAudit(_Syscall):
    """The audit log of a cube (needs ``admin``), or of everything for a superuser when ``cube`` is None; the
    records after ``since``, oldest first. Page on with the answer's ``next_since`` (over kernel shards a
    ``ShardCursor``, the records of all shards merged by time)."""

    op: Literal["audit"] = "audit"
    cube: CubeName | None = None
    since: Annotated[int, Field(ge=0, le=SQL_INT_MAX)] | ShardCursor = 0  # over shards: next_since of a page
    limit: int = Field(default=100, ge=1, le=1000)
    result_type: ClassVar[type[BaseModel]] = AuditList


class Snapshot(_Syscall):
    """The current header of every memory in ``cubes`` (all cubes when empty) with read times in the last
    ``read_window_s`` seconds: what the policy engine evaluates. Needs admin on every cube (superusers: all)."""

    op: Literal["snapshot"] = "snapshot"
    cubes: tuple[CubeName, ...] = Field(default=(), max_length=1024)
    read_window_s: float = Field(default=7 * 86400, ge=0, le=400 * 86400)
    result_type: ClassVar[type[BaseModel]] = KernelState


class Migrate(_Syscall):
    """Move memories to another kind, each on its own.

    ``to="activation"``: build the model's KV cache of each plaintext memory's text (needs a model host); the new
    version is kind ``activation`` with the payload, its fingerprint and ``derived_from`` the plaintext version it
    was built from. ``to="plaintext"``: drop the payload, keep the text (a new version of kind ``plaintext``).
    Memories already of the target kind are left as they are and reported in the result.
    ``compression`` (``to="activation"`` only; a ``KVCompression`` or its string, e.g. ``"int8+snapkv@0.5"``):
    how the cache is stored; the payload records the method, its parameters and the kept token positions.
    """

    op: Literal["migrate"] = "migrate"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    ids: tuple[MemoryId, ...] = Field(min_length=1, max_length=64)
    to: Kind
    expected_version: int | None = Field(default=None, ge=1)  # only with a single id
    compression: KVCompression | None = None
    # Build ONE cache of ``ids`` in order (an episodic cache, ``memos.kernel.ops.groups``) into the group memory of
    # this name in their cube, instead of migrating each memory.
    group: Tag | None = None
    result_type: ClassVar[type[BaseModel]] = MemoryList

    @model_validator(mode="after")
    def _compression_needs_activation(self) -> Migrate:
        if (self.compression is not None or self.group is not None) and self.to != Kind.ACTIVATION:
            raise ValueError("compression and group apply to migrate(to='activation') only")
        return self


class Distill(_Syscall):
    """Train a LoRA adapter on memories (their texts at their current versions) into a new parametric memory in
    ``cube``, or into a new version of the parametric memory ``replaces`` (retraining a stale adapter). Its provenance
    lists the exact source versions; it goes stale when one of them changes. Untrusted memories are refused unless
    ``allow_untrusted``. Needs a model host; training runs beside other syscalls as a job (``jobs``, ``cancel``)."""

    op: Literal["distill"] = "distill"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    ids: tuple[MemoryId, ...] = Field(default=(), max_length=256)
    cube: CubeName | None = None  # where the new parametric memory goes (with ``replaces``: that memory's cube)
    # Retrain this parametric memory (a new version of it, no longer stale) instead of creating one; without ``ids``
    # its sources are the memories it was distilled from, at their current versions, minus those no longer active.
    replaces: MemoryId | None = None
    tags: tuple[Tag, ...] = Field(default=(), max_length=MAX_TAGS)
    allow_untrusted: bool = False
    steps: int | None = Field(default=None, ge=1, le=10_000)  # optimiser steps (default: the recipe's epochs)
    # The version of each of ``ids`` the caller saw (same order); a source edited since is refused (VersionConflict).
    expected_versions: tuple[Annotated[int, Field(ge=1, le=SQL_INT_MAX)], ...] | None = None
    # What the evaluation must show for the adapter to be adopted (used in place of its sources); a miss is stored,
    # not adopted, with the reasons in ``metadata["adoption"]``.
    gate: AdoptionGate = AdoptionGate()
    # Recipes tried in order until one is adopted (empty: the model host's default recipe); the adapter kept is the
    # first adopted one, or the last one tried. ``steps`` overrides every recipe's.
    recipes: tuple[DistillRecipe, ...] = Field(default=(), max_length=4)
    result_type: ClassVar[type[BaseModel]] = Memory

    @model_validator(mode="after")
    def _versions_match_ids(self) -> Distill:
        if not self.ids and self.replaces is None:
            raise ValueError("name the memories to distill (ids) or the parametric memory to retrain (replaces)")
        if self.cube is None and self.replaces is None:
            raise ValueError("cube is required for a new parametric memory")
        if self.expected_versions is not None and len(self.expected_versions) != len(self.ids):
            raise ValueError(f"expected_versions has {len(self.expected_versions)} entries for {len(self.ids)} ids")
        return self


class Reevaluate(_Syscall):
    """Evaluate the adapter of parametric memory ``id`` again, on the loaded base model, after the base model changed
    (a new fingerprint): a new version that is adopted, with the adapter re-stamped for the loaded model, when the
    evaluation passes the adapter's gate; otherwise not adopted, with the reason, and stale (so that ``distill
    (replaces=id)`` or a policy retrains it). The kernel issues it itself, as ``system``, for each adopted adapter of
    another base model when it comes up with a model host. Needs a model host; runs as a job (``jobs``, ``cancel``)."""

    op: Literal["reevaluate"] = "reevaluate"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    id: MemoryId
    result_type: ClassVar[type[BaseModel]] = Memory


class ListJobs(_Syscall):
    """Long operations (migrations to activation, distillations) running or recently ended, in cubes the caller
    may read: what they work on, their phase and progress, who started them."""

    op: Literal["jobs"] = "jobs"
    running_only: bool = False
    result_type: ClassVar[type[BaseModel]] = JobList


class CancelJob(_Syscall):
    """Stop a running job at its next step; it then fails with ``Cancelled`` and commits nothing. Allowed to the
    principal that started it and to principals with ``write`` on every cube it touches."""

    op: Literal["cancel"] = "cancel"
    job_id: str = Field(min_length=1, max_length=64, pattern=r"^job_[0-9a-f]{8,32}$")
    result_type: ClassVar[type[BaseModel]] = Job


class AssembleContext(_Syscall):
    """The request-time scheduler: for ``query``, choose the memories to put in a prompt within ``token_budget``
    tokens (every memory's tokens count, cached or not; ``None``: half the model's context), best first, with
    reasons: the leading activation caches are injected (no prefill), the rest goes in as text."""

    op: Literal["assemble_context"] = "assemble_context"
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    cubes: tuple[CubeName, ...] = Field(min_length=1, max_length=64)
    token_budget: int | None = Field(default=None, ge=0, le=65536)  # None: half the model's context
    k: int = Field(default=8, ge=1, le=64)
    filters: SearchFilters = SearchFilters()
    result_type: ClassVar[type[BaseModel]] = ContextPlan


class Generate(_Syscall):
    """Run the model with memory injected: memories chosen by ``assemble_context`` for the last user message in
    ``cubes`` (or exactly ``memory``), then the messages. Needs a model host."""

    op: Literal["generate"] = "generate"
    messages: tuple[ChatMessage, ...] = Field(min_length=1, max_length=64)
    cubes: tuple[CubeName, ...] = Field(default=(), max_length=64)
    memory: tuple[MemoryId, ...] = Field(default=(), max_length=64)
    token_budget: int | None = Field(default=None, ge=0, le=65536)  # None: half the model's context
    k: int = Field(default=8, ge=1, le=64)
    max_new_tokens: int = Field(default=64, ge=1, le=2048)
    adapter: MemoryId | None = None  # a parametric memory to apply (default: the best one assemble_context finds)
    allow_stale: bool = False  # use a stale adapter anyway (its sources changed since it was trained)
    result_type: ClassVar[type[BaseModel]] = GenerateResult


class WriteMany(_Syscall):
    """Write up to ``MAX_WRITE_MANY`` new plaintext memories in one transaction (one fsync); their texts are embedded
    in batches and indexed in one call after the commit.

    Each item holds the fields of a ``write`` (``cube``, ``content``, ``metadata``, ``tags``, ``source``,
    ``source_refs``, ``derived_from``, ``trust``; ``op`` may be left out). Items are checked and written one by one,
    each all or nothing: an item that fails (invalid fields, no right on its cube, too large) is reported in its
    place and the others are written, as a batch reports each syscall. Each memory gets its own version 1 and
    provenance (operation ``write``, author the caller).
    """

    op: Literal["write_many"] = "write_many"
    items: tuple[dict[str, Any], ...] = Field(min_length=1, max_length=MAX_WRITE_MANY)
    result_type: ClassVar[type[BaseModel]] = WriteManyResult


# ------------------------------------------------------------------------------------------------ memory upkeep


class Ingest(_Syscall):
    """Extract memories from conversation ``messages`` into ``cube`` (a MemReader; docs/memory.md).

    The configured language model (``MEMOS_LLM``: rules by default) extracts candidate facts; each is compared with
    the nearest current memories of the cube and ``add``-ed, ``update``-d (a new version), ``invalidate``-s one it
    contradicts (archived with ``valid_until``) or is a ``noop``. What is written has the message ids as
    ``source_refs``, ``ingest:<extractor>`` as operation and a trust no higher than the input's. ``dry_run`` decides
    and writes nothing."""

    op: Literal["ingest"] = "ingest"
    cube: CubeName
    messages: tuple[ConversationMessage, ...] = Field(min_length=1, max_length=MAX_BATCH)
    source: Source = Source.CONVERSATION
    trust: Trust | None = None  # None: untrusted for tool/document sources, trusted otherwise
    tags: tuple[Tag, ...] = Field(default=(), max_length=MAX_TAGS)
    neighbours: int = Field(default=5, ge=1, le=50)
    dry_run: bool = False
    result_type: ClassVar[type[BaseModel]] = IngestResult


class Compress(_Syscall):
    """Summarise memories into one new memory in ``cube`` (default: the first source's), at most ``max_bytes``.

    The summariser is the configured language model (``MEMOS_LLM``; the rule-based fallback is extractive). The
    summary is ``derived`` from the sources at the versions summarised (``expected_versions``, when given, must be
    current); the sources are archived unless ``keep_sources``. Trust is the weakest of the sources'."""

    op: Literal["compress"] = "compress"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    ids: tuple[MemoryId, ...] = Field(min_length=1, max_length=64)
    cube: CubeName | None = None
    max_bytes: int = Field(default=1024, ge=16, le=MAX_CONTENT_BYTES)
    keep_sources: bool = False
    tags: tuple[Tag, ...] = Field(default=(), max_length=MAX_TAGS)
    expected_versions: tuple[Annotated[int, Field(ge=1, le=SQL_INT_MAX)], ...] | None = None
    result_type: ClassVar[type[BaseModel]] = Memory

    @model_validator(mode="after")
    def _versions_match_ids(self) -> Compress:
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("compress needs distinct memory ids")
        if self.expected_versions is not None and len(self.expected_versions) != len(self.ids):
            raise ValueError(f"expected_versions has {len(self.expected_versions)} entries for {len(self.ids)} ids")
        return self


class Merge(_Syscall):
    """Fuse memories that mean the same: group ``ids`` by the cosine similarity of their embeddings (each group
    gathers, around the first member not yet grouped, the others at least ``similarity`` to it, at most
    ``max_group``), and fuse each group of two or more into one new memory in the group's cube whose text the
    summariser writes, ``derived_from`` the members at the versions grouped; members archived unless
    ``keep_sources``. Trust is the weakest of each group's."""

    op: Literal["merge"] = "merge"
    policy_rule: str | None = Field(default=None, max_length=128)  # set by the policy scheduler only
    ids: tuple[MemoryId, ...] = Field(min_length=2, max_length=256)
    similarity: float = Field(default=0.85, gt=0.0, le=1.0, allow_inf_nan=False)
    max_group: int = Field(default=16, ge=2, le=64)
    max_bytes: int = Field(default=2048, ge=16, le=MAX_CONTENT_BYTES)
    keep_sources: bool = False
    expected_versions: tuple[Annotated[int, Field(ge=1, le=SQL_INT_MAX)], ...] | None = None
    result_type: ClassVar[type[BaseModel]] = MemoryList

    @model_validator(mode="after")
    def _versions_match_ids(self) -> Merge:
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("merge needs distinct memory ids")
        if self.expected_versions is not None and len(self.expected_versions) != len(self.ids):
            raise ValueError(f"expected_versions has {len(self.expected_versions)} entries for {len(self.ids)} ids")
        return self


class Related(_Syscall):
    """Memories linked to ``id``: stored links (``link``, ``supersedes``), provenance (``derived_from`` both ways),
    the neighbouring memories of its session and memories with its speaker or subject, best first, at most ``k``.
    Only memories in cubes the caller may read; only active ones unless ``include_inactive``."""

    op: Literal["related"] = "related"
    id: MemoryId
    k: int = Field(default=10, ge=1, le=MAX_K)
    relations: tuple[str, ...] = ()  # only these relations (empty: all)
    include_inactive: bool = False
    result_type: ClassVar[type[BaseModel]] = RelatedList


Syscall = Annotated[
    CreateCube
    | DropCube
    | ListCubes
    | GetCube
    | Write
    | Read
    | ListMemories
    | Search
    | Update
    | Delete
    | Purge
    | Archive
    | Restore
    | History
    | Rollback
    | LinkMemories
    | Fuse
    | Pin
    | Unpin
    | GrantRight
    | RevokeRight
    | GetStats
    | GetEvents
    | GetAudit
    | Snapshot
    | Migrate
    | Distill
    | Reevaluate
    | ListJobs
    | CancelJob
    | AssembleContext
    | Generate
    | WriteMany
    | Ingest
    | Related
    | Compress
    | Merge,
    Field(discriminator="op"),
]

SYSCALL_TYPES: dict[str, type[_Syscall]] = {
    cls.model_fields["op"].default: cls
    for cls in (
        CreateCube, DropCube, ListCubes, GetCube, Write, Read, ListMemories, Search, Update, Delete, Purge, Archive, Restore, History,
        Rollback, LinkMemories, Fuse, Pin, Unpin, GrantRight, RevokeRight, GetStats, GetEvents, GetAudit, Snapshot, Migrate, Distill,
        Reevaluate, ListJobs, CancelJob, AssembleContext, Generate, WriteMany, Ingest, Related, Compress, Merge,
    )
}

_ADAPTER: TypeAdapter[Any] = TypeAdapter(Syscall)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_syscall(data: Any) -> _Syscall:
    """Build a syscall from wire data (a dict with ``op``) or pass a syscall object through.

    Raises:
        InvalidSyscall: unknown ``op``, unknown fields, wrong types or values out of range, naming each field.
    """
    if isinstance(data, _Syscall):
        return data
    if not isinstance(data, dict):
        raise InvalidSyscall(f"a syscall must be an object with an 'op', got {type(data).__name__}")
    if not isinstance(data.get("op"), str) or data["op"] not in SYSCALL_TYPES:
        raise InvalidSyscall(
            f"unknown syscall op {data.get('op')!r}; expected one of {', '.join(sorted(SYSCALL_TYPES))}",
            op=str(data.get("op")),
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidSyscall(f"invalid {data['op']}: {describe_validation_error(exc)}", op=data["op"]) from exc


def build(cls: type[_Syscall], **fields: Any) -> _Syscall:
    """Construct a syscall, translating pydantic's error into ``InvalidSyscall`` (used by the client)."""
    try:
        return cls(**fields)
    except ValidationError as exc:
        op = cls.model_fields["op"].default
        raise InvalidSyscall(f"invalid {op}: {describe_validation_error(exc)}", op=op) from exc


def to_wire(syscall: _Syscall) -> dict[str, Any]:
    return syscall.model_dump(mode="json", by_alias=True)


SyscallBase = _Syscall


#: How long the kernel remembers a write's idempotency key (a retry later than this writes again).
IDEMPOTENCY_KEEP_S = 24 * 3600.0

#: Syscalls that change nothing a retry could duplicate: a transport may resend them after a lost answer (a killed
#: kernel). A syscall outside this set is resent only when it carries an ``idempotency_key``. (``read`` and
#: ``assemble_context`` count as uses of what they return; a resent one may count twice.)
RETRY_SAFE_OPS = frozenset({
    "list_cubes", "cube_info", "read", "list", "search", "history", "stats", "events", "audit", "snapshot", "jobs",
    "assemble_context", "related",
})


def retry_safe(syscall: dict[str, Any]) -> bool:
    """Whether a transport may resend this wire syscall when it cannot tell if it ran (see ``RETRY_SAFE_OPS``)."""
    if syscall.get("op") == "write_many":  # safe when every item carries its key
        items = syscall.get("items")
        return isinstance(items, list | tuple) and bool(items) and all(
            isinstance(i, dict) and i.get("idempotency_key") for i in items)
    return syscall.get("op") in RETRY_SAFE_OPS or bool(syscall.get("idempotency_key"))
