"""Episodic caches: one activation cache for several memories in order (a session, a thread).

``migrate(ids, "activation", group=name)`` builds the KV cache of the memories' texts as consecutive memory blocks
(one prefill, exactly what ``generate`` renders for them as text in that order) into a **group memory**: a new
activation memory in the memories' cube whose content is their texts joined by blank lines, whose ``derived_from``
is each source at its current version (in order) and whose metadata names the group (``GROUP_KEY``). Building the
same group name again in that cube makes a new version of the same group memory (plaintext with the new text, then
activation with its cache, so the activation invariant holds at every version).

**Staleness.** A group memory is derived from its sources, so a new version of any of them marks it stale (the
kernel's derivation rule, as for adapters); a stale cache is never injected. Rebuild it with the same call.

**Preference.** ``assemble_context`` and ``generate`` prefer a group cache that covers memories they chose: when every
source of a usable (active, not stale, built for the loaded model) group memory in a searched cube is among the
chosen memories (kv or text), the group is injected once as a cache and its sources are skipped ("covered by ...");
the largest covering group goes first, groups never overlap. Group memories never appear in search results
themselves: their text is their sources' text. ``generate(memory=[ids])`` keeps the caller's order, so there
(``ordered=True``) a group is used only where its sources are consecutive in the named order, in the group's order,
and everything before them is injected as a cache: the prompt is then token for token what the named memories
render, and the group only removes their prefill.

The sources' order is the group's: it is the order the caller gave, which is the order in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.errors import InvalidState, InvalidSyscall, VersionConflict
from memos.kernel import events as ev
from memos.kernel.authz import policy_rule, require_memory
from memos.kernel.context import CallContext
from memos.kernel.longops import require_model
from memos.kernel.versions import delete_blob, first_version, next_version, to_memory
from memos.types import (
    ContextItem,
    Kind,
    KVCompression,
    MemoryList,
    MemoryRef,
    Provenance,
    Right,
    Source,
    State,
)

if TYPE_CHECKING:
    from memos.kernel.jobs import RunningJob
    from memos.models.port import ActivationBuilt
    from memos.storage.sqlite import VersionRow

#: Metadata key of a group memory: the group's name.
GROUP_KEY = "memos.group"
_SEPARATOR = "\n\n"


def is_group(row: VersionRow) -> bool:
    return GROUP_KEY in row.metadata


def group_members(row: VersionRow) -> list[str]:
    """The source memory ids of a group memory, in order (from its provenance, which only the kernel writes)."""
    return [ref["id"] for ref in row.provenance.get("derived_from", ())]


@dataclass
class GroupPlan:
    cube: str
    name: str
    rule: str | None
    sources: list[VersionRow]
    existing: VersionRow | None
    memory_id: str
    path: Path

    def job_args(self) -> dict[str, Any]:
        return {"cubes": [self.cube], "memory_ids": [r.memory_id for r in self.sources], "total": 1,
                "rule": self.rule, "phase": "build activation group"}


# ----------------------------------------------------------------------------------------------------- build
# The steps of ``migrate(ids, "activation", group=...)``; ``MigrateOp`` (memos.kernel.ops.kinds) hands over to them.

def plan_group(ctx: CallContext, call: Any) -> GroupPlan:
    require_model(ctx, "migrate(to='activation', group=...)")
    ids = list(dict.fromkeys(call.ids))
    if len(ids) < 2:
        raise InvalidSyscall("a group cache needs at least two distinct memories")
    if call.expected_version is not None:
        raise InvalidSyscall("expected_version does not apply to a group cache")
    sources = [require_memory(ctx, m, Right.WRITE) for m in ids]
    cubes = {r.cube for r in sources}
    if len(cubes) != 1:
        raise InvalidSyscall(f"a group cache holds memories of one cube; these are in {sorted(cubes)}")
    for row in sources:
        if row.state != State.ACTIVE or row.kind == Kind.PARAMETRIC or is_group(row):
            raise InvalidState(f"memory {row.memory_id} is {row.state} {row.kind}; a group is built from active "
                               "plaintext or activation memories", memory_id=row.memory_id)
    kernel = ctx.kernel
    cube = sources[0].cube
    existing = _find_group(ctx, cube, call.group)
    memory_id = existing.memory_id if existing else kernel.new_id()
    version = (existing.current_version if existing else 0) + 2  # the text version, then the cache's
    path = kernel.blob_dir / "activation" / f"{memory_id}-v{version}.kv.safetensors"
    return GroupPlan(cube, call.group, policy_rule(ctx, call), sources, existing, memory_id, path)


def work_group(ctx: CallContext, call: Any, plan: GroupPlan, job: RunningJob | None) -> ActivationBuilt:
    if job is not None:
        job.raise_if_cancelled()
    extra = {} if call.compression is None else {"compression": call.compression.model_dump()}
    built = ctx.kernel.model.build_activation([r.content for r in plan.sources], str(plan.path), **extra)  # type: ignore[union-attr]
    if job is not None:
        job.progress(1, 1)
    return built


def commit_group(ctx: CallContext, call: Any, plan: GroupPlan, built: ActivationBuilt) -> MemoryList:
    from memos.kernel.ops.kinds import enforce_activation_budget

    store = ctx.kernel.store
    now = ctx.kernel.clock.now()
    for planned in plan.sources:
        row = store.get_version(planned.memory_id)
        if row is None or row.current_version != planned.current_version:
            raise VersionConflict(
                f"memory {planned.memory_id} changed while its group cache was built; nothing was committed",
                memory_id=planned.memory_id, expected=planned.current_version,
                current=None if row is None else row.current_version,
            )
    content = _SEPARATOR.join(r.content for r in plan.sources)
    trusts = [r.provenance.get("trust", "trusted") for r in plan.sources]
    prov = Provenance(
        author=ctx.principal, source=Source.DERIVED, operation="migrate:activation-group", policy_rule=plan.rule,
        derived_from=tuple(MemoryRef(id=r.memory_id, version=r.version) for r in plan.sources),
        trust="untrusted" if "untrusted" in trusts else "trusted",
    )
    fields: dict[str, Any] = {"content": content, "metadata": {GROUP_KEY: plan.name}, "tags": ("group-cache",)}
    # The text first, then its cache: every version keeps the activation invariant (a cache encodes its content).
    if plan.existing is None:
        text = first_version(ctx, memory_id=plan.memory_id, cube=plan.cube, kind=Kind.PLAINTEXT.value,
                             provenance=prov, at=now, **fields)
    else:
        text = next_version(ctx, plan.existing, prov, at=now, kind=Kind.PLAINTEXT.value, state=State.ACTIVE.value,
                            fingerprint=None, payload=None, **fields)
    new = next_version(ctx, text, prov, at=now, kind=Kind.ACTIVATION.value, fingerprint=built.fingerprint.model_dump(),
                       payload=built.payload.model_dump())
    store.set_stale(plan.memory_id, False)  # built from its sources' current versions
    detail: dict[str, Any] = {"tokens": built.tokens, "bytes": built.payload.size_bytes, "group": plan.name,
                              "members": tuple(r.memory_id for r in plan.sources)}
    if built.compression is not None:
        detail |= {"compression": KVCompression.model_validate(built.compression).method,
                   "kept_tokens": built.kept_tokens}
    ctx.audit_ok("migrate", plan.cube, plan.memory_id,
                 detail=f"group {plan.name!r} of {len(plan.sources)} memories v{new.version}")
    ctx.emit(ev.Migrated(cube=plan.cube, memory_id=plan.memory_id, principal=ctx.principal, frm="plaintext",
                         to="activation", rule=plan.rule, version=new.version, **detail))
    enforce_activation_budget(ctx, keep={plan.memory_id})
    return MemoryList(memories=(to_memory(ctx, store.get_version(plan.memory_id)),))  # type: ignore[arg-type]


def abort_group(ctx: CallContext, plan: GroupPlan) -> None:
    kernel = ctx.kernel
    ctx.after_commit(lambda p=plan.path: delete_blob(kernel, p))


def _find_group(ctx: CallContext, cube: str, name: str) -> VersionRow | None:
    store = ctx.kernel.store
    for row in store.current_of_kind(Kind.ACTIVATION.value) + store.current_of_kind(Kind.PLAINTEXT.value):
        if row.cube == cube and row.metadata.get(GROUP_KEY) == name and row.state != State.DELETED:
            return row
    return None


# ---------------------------------------------------------------------------------------------------- prefer

def prefer_groups(ctx: CallContext, items: list[ContextItem], cubes: tuple[str, ...], *, ordered: bool = False
                  ) -> tuple[list[ContextItem], dict[str, VersionRow]]:
    """``items`` with the usable group caches that cover chosen memories put in (first) and those memories
    skipped; returns the new items and the group rows used. ``ordered``: keep the items' order (see the module
    docstring), for memories a caller named."""
    from memos.kernel.ops.search import usable_kv

    chosen = {i.memory_id: i for i in items if i.use in ("kv", "text")}
    if len(chosen) < 2 or any(i.use == "adapter" for i in items):
        return items, {}
    groups = [r for r in ctx.kernel.store.current_of_kind(Kind.ACTIVATION.value)
              if r.cube in cubes and is_group(r) and r.state == State.ACTIVE
              and usable_kv(ctx, r) is None and set(group_members(r)) <= chosen.keys()]
    groups.sort(key=lambda r: -len(group_members(r)))
    if ordered:
        return _prefer_in_order(items, groups)
    used: dict[str, VersionRow] = {}
    covered: dict[str, str] = {}
    for group in groups:
        members = group_members(group)
        if any(m in covered for m in members):
            continue
        used[group.memory_id] = group
        covered |= dict.fromkeys(members, group.memory_id)
    if not used:
        return items, {}
    front = [_group_item(group, [chosen[m] for m in group_members(group)]) for group in used.values()]
    rest = [_covered(i, covered[i.memory_id]) if i.memory_id in covered else i for i in items]
    return front + rest, used


def _group_item(group: VersionRow, members: list[ContextItem]) -> ContextItem:
    tokens = sum(m.cached_tokens if m.use == "kv" else m.tokens for m in members)
    return ContextItem(
        memory_id=group.memory_id, version=group.version, kind=Kind.ACTIVATION, use="kv", tokens=0,
        cached_tokens=tokens, score=max(m.score for m in members),
        reason=f"episodic cache {group.metadata[GROUP_KEY]!r} covers {len(members)} chosen memories: "
               f"{tokens} tokens, no prefill")


def _covered(item: ContextItem, group_id: str) -> ContextItem:
    return item.model_copy(update={"use": "skip", "reason": f"{item.reason}; covered by episodic cache {group_id}"})


def _prefer_in_order(items: list[ContextItem], groups: list[VersionRow]
                     ) -> tuple[list[ContextItem], dict[str, VersionRow]]:
    """Walk the chosen items in order while they can still be a cache prefix; where the next ones are exactly a
    group's sources in the group's order (the largest such group first), put the group in their place."""
    chosen = [i for i in items if i.use in ("kv", "text")]
    at: dict[str, int] = {}  # memory id of a chosen item -> index of the group that covers it
    used: dict[str, VersionRow] = {}
    k = 0
    while k < len(chosen):
        match = next((g for g in groups if [i.memory_id for i in chosen[k:k + len(group_members(g))]]
                      == group_members(g)), None)
        if match is not None:
            used[match.memory_id] = match
            at |= dict.fromkeys(group_members(match), k)
            k += len(group_members(match))
        elif chosen[k].use == "kv":
            k += 1
        else:
            break  # a memory that goes in as text: nothing after it can be a cache
    if not used:
        return items, {}
    out: list[ContextItem] = []
    for item in items:
        if item.memory_id in at:
            group = next(g for g in used.values() if item.memory_id in group_members(g))
            if item.memory_id == group_members(group)[0]:
                out.append(_group_item(group, [i for i in chosen if i.memory_id in group_members(group)]))
            out.append(_covered(item, group.memory_id))
        else:
            out.append(item)
    return out, used
