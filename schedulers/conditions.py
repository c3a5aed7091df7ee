"""A rule's ``when`` compiled into conditions: each tests one memory and, when it holds, says why in words.

The words are the point: a dry run prints "read 6 times in the last 1h (>= 5)", not "condition 3 true". Every
condition has a static ``summary`` (what the rule asks, for group actions), a ``holds`` test, and an ``explain``
that words the live values; the engine words a memory's reason only once all its conditions hold, because most
memories fail some condition and formatting is what would cost. Conditions are ordered cheapest first, which is
also the order of the reason's parts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from memos.schedulers.facts import Facts, Ledger
from memos.schedulers.spec import BudgetPressure, Reads, Score, SizeRange, TagMatch, When
from memos.schedulers.units import format_age, format_duration, format_size
from memos.types import Trust

Check = Callable[[Facts, Ledger], bool]
Words = Callable[[Facts, Ledger], str]


@dataclass(frozen=True)
class Condition:
    """``dynamic`` conditions depend on the budget ledger, which changes as actions are planned; the others are
    fixed for a memory during an evaluation, so the engine can filter on them before ordering the candidates."""

    summary: str
    holds: Check
    explain: Words
    dynamic: bool = False


def compile_when(when: When) -> tuple[Condition, ...]:
    """The conditions of ``when``, cheapest first (the engine also filters states; see ``When.states``)."""
    conditions: list[Condition] = []
    if when.kind is not None:
        conditions.append(_kind(frozenset(when.kind)))
    if when.state is not None:
        conditions.append(_state(frozenset(when.state)))
    if when.pinned is not None:
        conditions.append(_flag("pinned", when.pinned, lambda f: f.memory.pinned))
    if when.stale is not None:
        conditions.append(_flag("stale", when.stale, lambda f: f.memory.stale))
    if when.trust is not None:
        conditions.append(_trust(when.trust))
    if when.tags is not None:
        conditions.append(_tags(when.tags))
    if when.older_than is not None:
        conditions.append(_elapsed("created", " ago", when.older_than, lambda f: f.age))
    if when.idle_for is not None:
        conditions.append(_elapsed("idle for", "", when.idle_for, lambda f: f.idle))
    if when.unchanged_for is not None:
        conditions.append(_elapsed("unchanged for", "", when.unchanged_for, lambda f: f.unchanged))
    if when.resident_for is not None:
        conditions.append(_elapsed(f"{'/'.join(when.kind or ('its kind',))} for", "", when.resident_for,
                                   lambda f: f.resident))
    if when.size is not None:
        conditions.append(_size(when.size))
    if when.reads is not None:
        conditions.append(_reads(when.reads))
    if when.retention is not None:
        conditions.append(_retention(when.retention))
    if when.budget_pressure is not None:
        conditions.append(_pressure(when.budget_pressure))
    return tuple(conditions)


def _at_least_most(at_least: float | None, at_most: float | None, show: Callable[[float], str]) -> str:
    parts = []
    if at_least is not None:
        parts.append(f">= {show(at_least)}")
    if at_most is not None:
        parts.append(f"<= {show(at_most)}")
    return ", ".join(parts)


def _above_below(above: float | None, below: float | None, show: Callable[[float], str]) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {show(above)}")
    if below is not None:
        parts.append(f"< {show(below)}")
    return ", ".join(parts)


def _within(value: float, at_least: float | None, at_most: float | None) -> bool:
    return (at_least is None or value >= at_least) and (at_most is None or value <= at_most)


def _between(value: float, above: float | None, below: float | None) -> bool:
    return (above is None or value > above) and (below is None or value < below)


def _kind(kinds: frozenset[str]) -> Condition:
    return Condition(
        f"kind {'|'.join(sorted(kinds))}",
        lambda f, _: f.memory.kind in kinds,
        lambda f, _: f"kind {f.memory.kind}",
    )


def _state(states: frozenset[str]) -> Condition:
    return Condition(
        f"state {'|'.join(sorted(states))}",
        lambda f, _: f.memory.state in states,
        lambda f, _: str(f.memory.state),
    )


def _flag(name: str, wanted: bool, read: Callable[[Facts], bool]) -> Condition:
    words = name if wanted else f"not {name}"
    return Condition(words, lambda f, _: read(f) == wanted, lambda f, _: words)


def _trust(trust: Trust) -> Condition:
    return Condition(str(trust), lambda f, _: f.memory.provenance.trust == trust, lambda f, _: str(trust))


def _tags(match: TagMatch) -> Condition:
    wanted_any, wanted_all, unwanted = set(match.any), set(match.all), set(match.none)
    summary = []
    if match.any:
        summary.append(f"tagged any of {', '.join(match.any)}")
    if match.all:
        summary.append(f"tagged all of {', '.join(match.all)}")
    if match.none:
        summary.append(f"tagged none of {', '.join(match.none)}")

    def holds(fact: Facts, _: Ledger) -> bool:
        tags = set(fact.memory.tags)
        return (not wanted_any or bool(tags & wanted_any)) and wanted_all <= tags and not tags & unwanted

    def explain(fact: Facts, _: Ledger) -> str:
        shown = sorted(set(fact.memory.tags) & (wanted_any | wanted_all))
        words = [f"tagged {', '.join(shown)}"] if shown else []
        if unwanted:
            words.append(f"not tagged {', '.join(match.none)}")
        return ", ".join(words)

    return Condition(", ".join(summary), holds, explain)


def _elapsed(label: str, suffix: str, threshold: float, read: Callable[[Facts], float]) -> Condition:
    return Condition(
        f"{label} >= {format_duration(threshold)}{suffix}",
        lambda f, _: read(f) >= threshold,
        lambda f, _: f"{label} {format_age(read(f))}{suffix} (>= {format_duration(threshold)})",
    )


def _size(size: SizeRange) -> Condition:
    bounds = _at_least_most(size.at_least, size.at_most, format_size)
    return Condition(
        f"size {bounds}",
        lambda f, _: _within(f.memory.size_bytes, size.at_least, size.at_most),
        lambda f, _: f"size {format_size(f.memory.size_bytes)} ({bounds})",
    )


def _reads(reads: Reads) -> Condition:
    bounds = _at_least_most(reads.at_least, reads.at_most, lambda n: str(int(n)))
    window = f" in the last {format_duration(reads.within)}" if reads.within is not None else ""

    def explain(fact: Facts, _: Ledger) -> str:
        count = fact.reads_within(reads.within)
        return f"read {count} time{'' if count == 1 else 's'}{window} ({bounds})"

    return Condition(
        f"reads{window} {bounds}",
        lambda f, _: _within(f.reads_within(reads.within), reads.at_least, reads.at_most),
        explain,
    )


def _retention(bounds: Score) -> Condition:
    shown = _above_below(bounds.above, bounds.below, lambda x: f"{x:g}")

    def explain(fact: Facts, _: Ledger) -> str:
        score = fact.retention
        halflife = "infinite" if score.halflife_s == float("inf") else format_age(score.halflife_s)
        return f"retention {score.value:.3g} ({shown}; idle {format_age(fact.idle)}, half-life {halflife})"

    return Condition(
        f"retention {shown}",
        lambda f, _: _between(f.retention.value, bounds.above, bounds.below),
        explain,
    )


def _percent(value: float) -> str:
    return "inf%" if value == float("inf") else f"{value * 100:.1f}".removesuffix(".0") + "%"


def _pressure(pressure: BudgetPressure) -> Condition:
    shown = _above_below(pressure.above, pressure.below, _percent)
    per_cube = pressure.budget.startswith("plaintext")

    def explain(fact: Facts, ledger: Ledger) -> str:
        value = ledger.pressure(pressure.budget, fact.memory.cube)
        limit = ledger.limit(pressure.budget) or 0
        shown_limit = format_size(limit) if pressure.budget.endswith("bytes") else f"{limit:g}"
        where = f" of {fact.memory.cube}" if per_cube else ""
        return f"{pressure.budget}{where} at {_percent(value)} of {shown_limit} ({shown})"

    return Condition(
        f"{pressure.budget} pressure {shown}",
        lambda f, ledger: _between(ledger.pressure(pressure.budget, f.memory.cube), pressure.above, pressure.below),
        explain,
        dynamic=True,
    )
