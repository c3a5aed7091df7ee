"""The dry run: what a policy would do to a snapshot at an instant, and why, as text for people.

``explain`` evaluates exactly as the scheduler does (same pure function) and renders the plan: the budgets before
and after, each action with its rule and reason in execution order, then the matches that were not acted on.
"""

from __future__ import annotations

from datetime import datetime

from memos.schedulers.actions import (
    BudgetUsage,
    CompressIntent,
    DistillIntent,
    MergeIntent,
    MigrateIntent,
    Plan,
    PlannedAction,
)
from memos.schedulers.engine import CompiledPolicy, plan
from memos.schedulers.snapshot import KernelSnapshot
from memos.schedulers.units import format_size
from memos.syscalls import Archive, Delete, Fuse, Pin
from memos.types import from_epoch

_SHOWN_IDS = 6


def explain(policy: CompiledPolicy, snapshot: KernelSnapshot, now: float | datetime) -> str:
    """The dry run of ``policy`` on ``snapshot`` at ``now``, as text (ends with a newline)."""
    return render(policy, plan(policy, snapshot, now))


def render(policy: CompiledPolicy, result: Plan) -> str:
    """Text of an evaluated plan (see :func:`explain`)."""
    source = f" ({policy.source})" if policy.source else ""
    cubes = ", ".join(result.cubes_considered) or "none"
    lines = [
        f"policy {policy.name}{source} at {from_epoch(result.at).isoformat(timespec='seconds')}",
        f"scope: {_count(result.memories_considered, 'memory', 'memories')} in "
        f"{_count(len(result.cubes_considered), 'cube', 'cubes')} ({cubes})",
    ]
    if result.budgets:
        lines.append("budgets:")
        lines.extend(f"  {_budget(usage)}" for usage in result.budgets)
    lines.append(f"actions ({len(result.actions)}):" if result.actions else "actions: none")
    for number, action in enumerate(result.actions, 1):
        lines.append(f"  {number}. [{action.rule}] {describe(action)}")
        lines.append(f"     because {action.reason}")
    if result.skipped:
        lines.append(f"not acted on ({len(result.skipped)}):")
        for note in result.skipped:
            what = f" {note.memory.id} ({note.cube})" if note.memory else (f" {note.cube}" if note.cube else "")
            lines.append(f"  [{note.rule}]{what}: {note.reason}")
    return "\n".join(lines) + "\n"


def describe(action: PlannedAction) -> str:
    """One line saying what an action does, e.g. ``migrate m_... v3 plaintext -> activation in team/a``."""
    call = action.syscall
    version = f" v{action.memories[0].version}" if len(action.memories) == 1 else ""
    where = f" in {action.cube}"
    if isinstance(call, MigrateIntent):
        return f"migrate {call.id}{version} {call.from_kind} -> {call.to}{where}"
    if isinstance(call, CompressIntent):
        sources = "kept" if call.keep_sources else "archived"
        return f"compress {call.id}{version} into a summary of <= {format_size(call.max_bytes)} (source {sources}){where}"
    if isinstance(call, MergeIntent):
        sources = "kept" if call.keep_sources else "archived"
        return (f"merge those of {len(call.sources)} memories that mean the same (cosine >= {call.similarity:g}, "
                f"groups of <= {call.max_group}; sources {sources}){where}: {_ids(action)}")
    if isinstance(call, DistillIntent):
        return f"distill {len(call.sources)} memories into one {call.into} adapter{where}: {_ids(action)}"
    if isinstance(call, Fuse):
        sources = "kept" if call.keep_sources else "archived"
        return f"fuse {len(call.ids)} memories into one (sources {sources}){where}: {_ids(action)}"
    if isinstance(call, Pin):
        return f"pin {call.id}{version}{where}"
    verb = "archive" if isinstance(call, Archive) else "delete"
    assert isinstance(call, Archive | Delete)
    return f"{verb} {call.id}{version}{where}"


def _ids(action: PlannedAction) -> str:
    ids = [ref.id for ref in action.memories]
    more = len(ids) - _SHOWN_IDS
    return ", ".join(ids[:_SHOWN_IDS]) + (f" and {more} more" if more > 0 else "")


def _budget(usage: BudgetUsage) -> str:
    show = format_size if usage.budget.endswith("bytes") else (lambda value: f"{value:g}")
    where = f" {usage.cube}" if usage.cube else ""
    change = f" -> {show(usage.after)} after the plan" if usage.after != usage.before else ""
    return f"{usage.budget}{where}: {show(usage.before)} of {show(usage.limit)}{change}"


def _count(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"
