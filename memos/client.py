"""The Python client: friendly methods that build syscalls and send them over a transport.

The client holds no logic of its own; every method is one syscall (see docs/syscalls.md). It is the same object
in-process, over Ray and over HTTP; only the transport differs. A client acts as one principal; ``as_principal``
gives a sibling client for another principal on the same transport (used by multi-agent workflows).

    from memos.client import Memos
    mem = Memos.embedded("/tmp/memos-demo", principal="agent:writer")
    mem.create_cube("team/research")
    m = mem.write("team/research", "The launch is on Friday")
    mem.update(m.id, content="The launch moved to Monday", expected_version=1)
    [v.content for v in mem.history(m.id)]
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from memos import syscalls as sc
from memos.errors import InvalidSyscall
from memos.transports import Transport, unwrap
from memos.types import (
    Ack,
    AdoptionGate,
    AuditList,
    AuditRecord,
    ChatMessage,
    ContextPlan,
    ConversationMessage,
    CubeInfo,
    DistillRecipe,
    Event,
    EventList,
    GenerateResult,
    IngestResult,
    Job,
    Kind,
    KVCompression,
    Memory,
    MemoryRef,
    RelatedMemory,
    Right,
    SearchHit,
    Source,
    Stats,
    Trust,
    WriteManyResult,
)


class Memos:
    def __init__(self, transport: Transport, principal: str | None = None) -> None:
        """A client acting as ``principal`` over ``transport``.

        ``principal`` may be left out when the transport knows it (``HttpTransport``: the API key decides it).

        Raises:
            InvalidSyscall: no principal given and the transport cannot tell it.
        """
        if principal is None:
            whoami = getattr(transport, "whoami", None)
            if whoami is None:
                raise InvalidSyscall(
                    f"{type(transport).__name__} does not know who is calling: give principal= (e.g. 'agent:writer')"
                )
            principal = whoami()
        self.transport = transport
        self.principal = principal

    # ------------------------------------------------------------------------------------------------ construction

    @classmethod
    def embedded(cls, home: str | Path, principal: str, **settings: Any) -> Memos:
        """A kernel in this process on ``home`` (SQLite + embedded Chroma + the bundled embedder; ``~`` expands).

        The model host (``Settings.model``, the bundled SmolLM2 by default) is attached lazily: it is loaded on the
        first call that needs it (``migrate(to="activation")``, ``assemble_context``, ``generate``, ``distill``),
        so plaintext work never pays for it. ``model=None`` leaves it out (those calls raise ``ModelUnavailable``).

        This process owns ``home`` until ``close`` (``memos.storage.owner``).

        Raises:
            DataDirInUse: another process owns ``home`` (``memos serve``, ``memos up``, another embedded kernel).
        """
        from memos.config import Settings
        from memos.service import lazy_model, open_transport

        config = Settings(home=Path(home).expanduser(), **settings)
        # A sharded data dir ('memos up --shards N' made it): every shard's kernel, behind the shard router.
        return cls(open_transport(config, model=lazy_model(config), owner="Memos.embedded", policies=False), principal)

    def as_principal(self, principal: str) -> Memos:
        return Memos(self.transport, principal)

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------------------------------------ plumbing

    def execute(self, syscall: sc.SyscallBase, *, trace_id: str | None = None) -> Any:
        """Send a syscall; return its typed result or raise its typed error."""
        data = unwrap(self.transport.call(self.principal, sc.to_wire(syscall), trace_id))
        return syscall.result_type.model_validate(data)

    def _do(self, cls: type[sc.SyscallBase], **fields: Any) -> Any:
        return self.execute(sc.build(cls, **fields))

    # ------------------------------------------------------------------------------------------------ cubes

    def create_cube(self, name: str, description: str = "", *, exist_ok: bool = False) -> CubeInfo:
        return self._do(sc.CreateCube, name=name, description=description, exist_ok=exist_ok)

    def drop_cube(self, name: str) -> Ack:
        return self._do(sc.DropCube, name=name)

    def cubes(self) -> tuple[CubeInfo, ...]:
        return self._do(sc.ListCubes).cubes

    def cube_info(self, name: str) -> CubeInfo:
        return self._do(sc.GetCube, name=name)

    def grant(self, cube: str, principal: str, right: Right | str) -> CubeInfo:
        return self._do(sc.GrantRight, cube=cube, principal=principal, right=Right(right))

    def revoke(self, cube: str, principal: str) -> CubeInfo:
        return self._do(sc.RevokeRight, cube=cube, principal=principal)

    # ------------------------------------------------------------------------------------------------ memories

    def write(
        self,
        cube: str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        tags: Iterable[str] = (),
        source: Source | str = Source.CONVERSATION,
        source_refs: Iterable[str] = (),
        derived_from: Iterable[MemoryRef | tuple[str, int]] = (),
        trust: Trust | str | None = None,
        idempotency_key: str | None = None,
    ) -> Memory:
        """Write a memory. Every call carries an idempotency key (a fresh one unless given): a transport that resends
        it after a lost answer (a restarted kernel actor) gets the memory it wrote, never a duplicate."""
        refs = tuple(r if isinstance(r, MemoryRef) else MemoryRef(id=r[0], version=r[1]) for r in derived_from)
        return self._do(
            sc.Write, cube=cube, content=content, metadata=metadata or {}, tags=tuple(tags), source=Source(source),
            source_refs=tuple(source_refs), derived_from=refs, trust=Trust(trust) if trust else None,
            idempotency_key=idempotency_key or uuid.uuid4().hex,
        )

    def write_many(self, items: Iterable[sc.Write | dict[str, Any] | str], *, cube: str | None = None) -> WriteManyResult:
        """Write up to ``sc.MAX_WRITE_MANY`` memories in one transaction (the ``write_many`` syscall).

        An item is a ``sc.Write``, a dict of a write's fields, or a string (the content); ``cube`` is the cube of
        items that name none. Items fail alone: ``result.results[i]`` holds the id written or item ``i``'s error.
        """
        wire: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, str):
                data: dict[str, Any] = {"content": item}
            elif isinstance(item, sc.Write):
                data = sc.to_wire(item)
            else:
                data = dict(item)
            if cube is not None:
                data.setdefault("cube", cube)
            if not data.get("idempotency_key"):  # each item its own: a resent call writes nothing twice
                data["idempotency_key"] = uuid.uuid4().hex
            wire.append(data)
        return self._do(sc.WriteMany, items=tuple(wire))

    def read(self, memory_id: str, version: int | None = None) -> Memory:
        return self._do(sc.Read, id=memory_id, version=version)

    def list(
        self, cube: str, *, states: Iterable[str] = ("active",), tags: Iterable[str] = (), limit: int = 100, offset: int = 0
    ) -> tuple[Memory, ...]:
        return self._do(
            sc.ListMemories, cube=cube, states=tuple(states), tags=tuple(tags), limit=limit, offset=offset
        ).memories

    def search(
        self,
        query: str,
        cubes: str | Iterable[str],
        *,
        k: int = 10,
        as_of: datetime | None = None,
        mode: str = "hybrid",
        tags: Iterable[str] = (),
        metadata: dict[str, Any] | None = None,
        trust: Trust | str | None = None,
        authors: Iterable[str] = (),
        sources: Iterable[Source | str] = (),
        expand: int = 0,
    ) -> tuple[SearchHit, ...]:
        cube_list = (cubes,) if isinstance(cubes, str) else tuple(cubes)
        filters = sc.SearchFilters(
            tags=tuple(tags), metadata=metadata or {}, trust=Trust(trust) if trust else None,
            authors=tuple(authors), sources=tuple(Source(s) for s in sources),
        )
        return self._do(sc.Search, query=query, cubes=cube_list, k=k, as_of=as_of, mode=mode, filters=filters,
                        expand=expand).hits

    def update(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        expected_version: int | None = None,
        source_refs: Iterable[str] = (),
    ) -> Memory:
        return self._do(
            sc.Update, id=memory_id, content=content, metadata=metadata, tags=None if tags is None else tuple(tags),
            expected_version=expected_version, source_refs=tuple(source_refs),
        )

    def delete(self, memory_id: str, *, expected_version: int | None = None) -> Memory:
        """Tombstone (a new version in state deleted; history stays). See ``purge`` for a hard delete."""
        return self._do(sc.Delete, id=memory_id, expected_version=expected_version)

    def purge(self, memory_id: str) -> Ack:
        """Hard delete: erase every version, index entry and payload file of the memory."""
        return self._do(sc.Purge, id=memory_id)

    def archive(self, memory_id: str, *, expected_version: int | None = None) -> Memory:
        return self._do(sc.Archive, id=memory_id, expected_version=expected_version)

    def restore(self, memory_id: str) -> Memory:
        return self._do(sc.Restore, id=memory_id)

    def history(self, memory_id: str) -> tuple[Memory, ...]:
        return self._do(sc.History, id=memory_id).memories

    def rollback(self, memory_id: str, to_version: int, *, expected_version: int | None = None) -> Memory:
        return self._do(sc.Rollback, id=memory_id, to_version=to_version, expected_version=expected_version)

    def link(self, source: str, target: str, relation: str = "related") -> Ack:
        return self._do(sc.LinkMemories, source=source, target=target, relation=relation)

    def fuse(
        self, ids: Iterable[str], cube: str, content: str, *, tags: Iterable[str] = (), keep_sources: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> Memory:
        return self._do(
            sc.Fuse, ids=tuple(ids), cube=cube, content=content, tags=tuple(tags), keep_sources=keep_sources,
            metadata=metadata or {},
        )

    def ingest(
        self, cube: str, messages: Iterable[ConversationMessage | dict[str, Any]], *, source: Source | str = Source.CONVERSATION,
        trust: Trust | str | None = None, tags: Iterable[str] = (), neighbours: int = 5, dry_run: bool = False,
    ) -> IngestResult:
        """Extract memories from conversation messages (``{"id", "speaker", "content", "at", "session"}``) and
        decide add / update / invalidate / noop for each against what ``cube`` holds (docs/memory.md)."""
        return self._do(sc.Ingest, cube=cube, messages=tuple(messages), source=Source(source), trust=Trust(trust) if trust else None,
                        tags=tuple(tags), neighbours=neighbours, dry_run=dry_run)

    def related(self, memory_id: str, *, k: int = 10, relations: Iterable[str] = (),
                include_inactive: bool = False) -> tuple[RelatedMemory, ...]:
        return self._do(sc.Related, id=memory_id, k=k, relations=tuple(relations),
                        include_inactive=include_inactive).related

    def compress(
        self, ids: str | Iterable[str], *, cube: str | None = None, max_bytes: int = 1024, keep_sources: bool = False,
        tags: Iterable[str] = (), expected_versions: Iterable[int] | None = None,
    ) -> Memory:
        """Summarise memories into one new memory derived from them (the sources are archived unless kept)."""
        ids = (ids,) if isinstance(ids, str) else tuple(ids)
        return self._do(sc.Compress, ids=ids, cube=cube, max_bytes=max_bytes, keep_sources=keep_sources,
                        tags=tuple(tags), expected_versions=tuple(expected_versions) if expected_versions else None)

    def merge(
        self, ids: Iterable[str], *, similarity: float = 0.85, max_group: int = 16, max_bytes: int = 2048,
        keep_sources: bool = False, expected_versions: Iterable[int] | None = None,
    ) -> tuple[Memory, ...]:
        """Fuse the memories among ``ids`` that mean the same (embedding cosine >= ``similarity``), each group into
        one summary memory; returns the new memories."""
        return self._do(sc.Merge, ids=tuple(ids), similarity=similarity, max_group=max_group, max_bytes=max_bytes,
                        keep_sources=keep_sources,
                        expected_versions=tuple(expected_versions) if expected_versions else None).memories

    def pin(self, memory_id: str) -> Memory:
        return self._do(sc.Pin, id=memory_id)

    def unpin(self, memory_id: str) -> Memory:
        return self._do(sc.Unpin, id=memory_id)

    # ------------------------------------------------------------------------------------------------ kinds, context

    def migrate(self, ids: str | Iterable[str], to: Kind | str, *,
                compression: KVCompression | str | None = None, group: str | None = None) -> tuple[Memory, ...]:
        """Move memories to kind ``to``; with ``group``, build one episodic cache of ``ids`` in order instead (the
        result is the group memory)."""
        ids = (ids,) if isinstance(ids, str) else tuple(ids)
        return self._do(sc.Migrate, ids=ids, to=Kind(to), compression=compression, group=group).memories

    def assemble_context(
        self, query: str, cubes: str | Iterable[str], *, token_budget: int | None = None, k: int = 8
    ) -> ContextPlan:
        cube_list = (cubes,) if isinstance(cubes, str) else tuple(cubes)
        return self._do(sc.AssembleContext, query=query, cubes=cube_list, token_budget=token_budget, k=k)

    def generate(
        self,
        messages: str | Iterable[dict[str, str] | ChatMessage],
        *,
        cubes: str | Iterable[str] = (),
        memory: Iterable[str] = (),
        token_budget: int | None = None,
        k: int = 8,
        max_new_tokens: int = 64,
        adapter: str | None = None,
        allow_stale: bool = False,
    ) -> GenerateResult:
        """Run the model with memory: chosen from ``cubes`` for the last user message, or exactly ``memory``.

        ``token_budget`` bounds the tokens of the memory in the prompt (default: half the model's context). A memory
        named in ``memory`` that does not fit is left out with a warning in ``result.plan.warnings`` (and the log)."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        msgs = tuple(m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages)
        cube_list = (cubes,) if isinstance(cubes, str) else tuple(cubes)
        return self._do(
            sc.Generate, messages=msgs, cubes=cube_list, memory=tuple(memory), token_budget=token_budget, k=k,
            max_new_tokens=max_new_tokens, adapter=adapter, allow_stale=allow_stale,
        )

    def distill(
        self, ids: Iterable[str] = (), cube: str | None = None, *, tags: Iterable[str] = (),
        allow_untrusted: bool = False, steps: int | None = None, expected_versions: Iterable[int] | None = None,
        replaces: str | None = None, gate: AdoptionGate | None = None, recipes: Iterable[DistillRecipe] = (),
    ) -> Memory:
        """Train a LoRA adapter on these memories into a new parametric memory in ``cube`` (or, with ``replaces``,
        retrain that parametric memory from its sources' current versions). Blocks until it is trained (minutes);
        meanwhile ``jobs()`` shows its progress and ``cancel(job_id)`` stops it. ``recipes`` are tried in order until
        one passes ``gate`` (default thresholds: ``AdoptionGate()``); ``metadata["adoption"]`` says if it did."""
        return self._do(sc.Distill, ids=tuple(ids), cube=cube, tags=tuple(tags), allow_untrusted=allow_untrusted,
                        steps=steps, expected_versions=None if expected_versions is None else tuple(expected_versions),
                        replaces=replaces, gate=gate or AdoptionGate(), recipes=tuple(recipes))

    def reevaluate(self, memory_id: str) -> Memory:
        """Evaluate the adapter of parametric memory ``memory_id`` again on the loaded base model (it was built for
        another one): its next version says in ``metadata["adoption"]`` whether it stays adopted. The kernel does this
        itself for adopted adapters when it comes up with a new base model; blocks until evaluated."""
        return self._do(sc.Reevaluate, id=memory_id)

    def jobs(self, *, running_only: bool = False) -> tuple[Job, ...]:
        """Long operations (migrations to activation, distillations) running or recently ended that you may see."""
        return self._do(sc.ListJobs, running_only=running_only).jobs

    def cancel(self, job_id: str) -> Job:
        """Stop a running job at its next step: it fails with ``Cancelled`` and commits nothing."""
        return self._do(sc.CancelJob, job_id=job_id)

    # ------------------------------------------------------------------------------------------------ observability

    def stats(self) -> Stats:
        return self._do(sc.GetStats)

    def events(self, since: int = 0, *, limit: int = 100, cubes: Iterable[str] = (), types: Iterable[str] = (),
               latest: bool = False) -> EventList:
        """Events after ``since``; ``types`` keeps only those; ``latest`` gives the newest ``limit`` (in order)."""
        return self._do(sc.GetEvents, since=since, limit=limit, cubes=tuple(cubes), types=tuple(types), latest=latest)

    def audit(self, cube: str | None = None, *, since: int | str = 0, limit: int = 100) -> tuple[AuditRecord, ...]:
        return self.audit_page(cube, since=since, limit=limit).records

    def audit_page(self, cube: str | None = None, *, since: int | str = 0, limit: int = 100) -> AuditList:
        """The records after ``since`` and the cursor of the next page (``next_since``)."""
        return self._do(sc.GetAudit, cube=cube, since=since, limit=limit)


__all__ = ["Event", "Memos"]
