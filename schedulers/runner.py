"""Runs lifecycle policies: snapshot -> pure evaluation -> syscalls, on each policy's schedule (APScheduler).

One evaluation (``PolicyRunner.run_once``):
1. the ``snapshot`` syscall (as the scheduler's system principal) gives the current headers and read times of the
   cubes the policy governs;
2. ``engine.plan`` decides, purely, what should happen and why;
3. each planned action is executed as an ordinary syscall through the kernel, with ``policy_rule`` set to
   ``<policy>/<rule>`` so the provenance of every version it writes names the rule; actions on one memory carry
   the version the engine saw (``expected_version``), so a memory edited meanwhile is refused with
   ``VersionConflict`` rather than acted on. A failed action is reported and the others still run.

Evaluations are serialised (one snapshot, plan and quick actions at a time, across all policies), except for
distillations: they train for minutes, so they run last, after the runner lets other policies evaluate. While a
distillation trains, its policy does not evaluate again (its next snapshot would not show the adapter yet), and no
other policy distils the same memories (that action is reported ``not_executed``).

The scheduler calls the kernel through ``execute(principal, syscall) -> result`` (a ``Kernel`` or anything with
that method), in the process that owns the kernel. Only this module imports apscheduler.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos.errors import MemosError
from memos.logging import get_logger
from memos.schedulers.actions import (
    CompressIntent,
    DistillIntent,
    MergeIntent,
    MigrateIntent,
    Plan,
    PlannedAction,
)
from memos.schedulers.engine import CompiledPolicy, plan
from memos.schedulers.loader import load_policy
from memos.schedulers.snapshot import KernelSnapshot
from memos.syscalls import Compress, Distill, Merge, Migrate, Snapshot

SCHEDULER_PRINCIPAL = "system"
NOT_FAILED = frozenset({"ok", "not_executed"})  # every other action outcome is an error code


@dataclass(frozen=True)
class ActionOutcome:
    rule: str
    op: str
    memories: tuple[str, ...]
    outcome: str  # "ok", "not_executed" or an error code
    detail: str
    cube: str = ""  # the cube the action acts in

    @property
    def failed(self) -> bool:
        return self.outcome not in NOT_FAILED


@dataclass(frozen=True)
class RunReport:
    policy: str
    at: float
    duration_s: float
    planned: int
    outcomes: tuple[ActionOutcome, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> int:
        return sum(o.outcome == "ok" for o in self.outcomes)

    @property
    def failed(self) -> int:
        return sum(o.failed for o in self.outcomes)

    @property
    def not_executed(self) -> int:
        return sum(o.outcome == "not_executed" for o in self.outcomes)


def to_syscall(action: PlannedAction) -> Any:
    """The kernel syscall for a planned action, attributed to its rule."""
    call = action.syscall
    if isinstance(call, MigrateIntent):
        return Migrate(ids=(call.id,), to=call.to, expected_version=call.expected_version, policy_rule=action.policy_rule,
                       compression=call.compression)
    if isinstance(call, DistillIntent):
        rule = action.policy_rule
        return Distill(
            ids=tuple(ref.id for ref in call.sources), expected_versions=tuple(ref.version for ref in call.sources),
            cube=call.cube, allow_untrusted=call.allow_untrusted, tags=("distilled", _tag(rule)), policy_rule=rule,
            gate=call.gate, recipes=call.recipes,
        )
    if isinstance(call, MergeIntent):
        return Merge(ids=tuple(r.id for r in call.sources), expected_versions=tuple(r.version for r in call.sources),
                     similarity=call.similarity, max_group=call.max_group, keep_sources=call.keep_sources,
                     policy_rule=action.policy_rule)
    if isinstance(call, CompressIntent):
        return Compress(ids=(call.id,), max_bytes=call.max_bytes, keep_sources=call.keep_sources,
                        expected_versions=(call.expected_version,), policy_rule=action.policy_rule)
    return call.model_copy(update={"policy_rule": action.policy_rule})


def _tag(rule: str) -> str:
    """The rule as a tag of what it distilled (a tag has at most 64 characters)."""
    return f"rule:{rule}"[:64]


def _digest(source: str | None) -> str | None:
    """The first 16 hex of the sha256 of a policy file as it is on disk now (None: no file, or unreadable)."""
    if not source:
        return None
    try:
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def _action_key(action: PlannedAction) -> tuple[str, tuple[tuple[str, int], ...]]:
    return action.policy_rule, tuple((r.id, r.version) for r in action.memories)


def is_long(action: PlannedAction) -> bool:
    """Whether the action trains on the model host (minutes), and so runs outside the evaluation lock."""
    return isinstance(action.syscall, DistillIntent)




class PolicyRunner:
    """Evaluates policies against a kernel, now or on their schedules. Thread-safe: one evaluation at a time, a
    policy's distillations excepted (see the module's docstring)."""

    def __init__(
        self,
        execute: Callable[[str, Any], Any],
        policies: Iterable[CompiledPolicy],
        *,
        clock: Callable[[], float] = time.time,
        on_report: Callable[[RunReport], None] | None = None,
    ) -> None:
        self.execute = execute
        self.policies = {p.name: p for p in policies}
        self.clock = clock
        self.on_report = on_report
        self.reports: list[RunReport] = []
        self._lock = threading.Lock()  # snapshot, plan and quick actions; reports; claims
        self._running = {name: threading.Lock() for name in self.policies}  # one run of a policy at a time
        self._digests = {name: _digest(p.source) for name, p in self.policies.items()}  # the files as loaded
        self.paused: set[str] = set()  # full rule names ("policy/rule") whose actions are not executed
        # (rule, memory refs) of actions whose job was cancelled: not planned again until a memory changes.
        self._cancelled: dict[tuple[str, tuple[tuple[str, int], ...]], str] = {}
        self._distilling: dict[str, str] = {}  # memory id -> rule distilling it now
        self._scheduler: Any = None
        self.log = get_logger("memos.scheduler")

    @classmethod
    def from_files(cls, execute: Callable[[str, Any], Any], paths: Iterable[str], **kwargs: Any) -> PolicyRunner:
        """Raises PolicyError naming file, line and key for an invalid policy."""
        return cls(execute, [load_policy(p) for p in paths], **kwargs)

    def snapshot(self, policy: CompiledPolicy) -> KernelSnapshot:
        state = self.execute(SCHEDULER_PRINCIPAL, Snapshot(read_window_s=max(policy.read_window_s, 0.0)))
        memories = [m for m in state.memories if policy.governs(m.cube)]
        ids = {m.id for m in memories}
        return KernelSnapshot(
            memories=memories,
            read_times={k: v for k, v in state.read_times.items() if k in ids},
            loaded_adapters=state.loaded_adapters,
        )

    def plan(self, name: str, now: float | None = None) -> Plan:
        policy = self.policies[name]
        return plan(policy, self.snapshot(policy), self.clock() if now is None else now)

    def run_once(self, name: str, now: float | None = None) -> RunReport:
        """Evaluate policy ``name`` and execute its actions. Raises MemosError only if the snapshot fails."""
        if name not in self.policies:
            raise KeyError(name)
        with self._running[name]:
            started = time.perf_counter()
            with self._lock:
                at = self.clock() if now is None else now
                result = self.plan(name, at)
                held = [(a, self._held(a)) for a in result.actions]
                outcomes = [self._run_action(a, why_not=why) for a, why in held if why is not None]
                actions = [a for a, why in held if why is None]
                outcomes += [self._run_action(a) for a in actions if not is_long(a)]
                long = [(a, self._claim(a)) for a in actions if is_long(a)]
            try:
                for action, holder in long:
                    busy = f"its memories are being distilled by {holder}" if holder is not None else None
                    outcomes.append(self._run_action(action, why_not=busy))
            finally:
                with self._lock:
                    for action, holder in long:
                        if holder is None:
                            self._release(action)
            report = RunReport(name, at, time.perf_counter() - started, len(result.actions), tuple(outcomes))
            with self._lock:
                self.reports.append(report)
                del self.reports[:-100]
        self.log.info("policy evaluated", policy=name, planned=report.planned, ok=report.ok,
                      duration_ms=round(report.duration_s * 1000, 1))
        if self.on_report is not None:
            self.on_report(report)
        return report

    def _held(self, action: PlannedAction) -> str | None:
        """Why the action is not executed this run (its rule is paused, or the same action was cancelled), or None."""
        if action.policy_rule in self.paused:
            return f"rule {action.policy_rule} is paused ('memos policy resume {action.policy_rule}')"
        by = self._cancelled.get(_action_key(action))
        if by is not None:
            return f"the same action was cancelled by {by}; it is planned again when one of its memories changes"
        return None

    def _claim(self, action: PlannedAction) -> str | None:
        """Claim the action's memories for a distillation (under ``_lock``): None, or the rule that holds one."""
        ids = [r.id for r in action.memories]
        holder = next((self._distilling[i] for i in ids if i in self._distilling), None)
        if holder is None:
            self._distilling.update(dict.fromkeys(ids, action.policy_rule))
        return holder

    def _release(self, action: PlannedAction) -> None:
        for ref in action.memories:
            self._distilling.pop(ref.id, None)

    def _run_action(self, action: PlannedAction, why_not: str | None = None) -> ActionOutcome:
        """Execute one action, or report it ``not_executed`` (``why_not``, or what this kernel cannot execute)."""
        ids = tuple(r.id for r in action.memories)
        if why_not is not None:
            return ActionOutcome(action.policy_rule, action.syscall.op, ids, "not_executed", why_not, action.cube)
        call = to_syscall(action)
        try:
            self.execute(SCHEDULER_PRINCIPAL, call)
        except MemosError as exc:
            self.log.warning("policy action failed", rule=action.policy_rule, op=call.op, code=exc.code, error=exc.message)
            if exc.code == "cancelled" and exc.details.get("by"):  # stopped on purpose: not started again next run
                self._cancelled[_action_key(action)] = str(exc.details["by"])
            return ActionOutcome(action.policy_rule, call.op, ids, exc.code, exc.message, action.cube)
        return ActionOutcome(action.policy_rule, call.op, ids, "ok", action.reason, action.cube)

    # -------------------------------------------------------------------------------------------- lifecycle

    def loaded(self) -> list[dict[str, Any]]:
        """The loaded policies: name, source file, sha256 (first 16 hex) of the file as loaded and as on disk now
        (``differs_from_disk`` when an edit is not loaded yet), schedule, paused rules, last run."""
        out = []
        with self._lock:
            last = {r.policy: r for r in self.reports}
            for name, policy in sorted(self.policies.items()):
                on_disk = _digest(policy.source)
                report = last.get(name)
                out.append({
                    "name": name, "source": policy.source, "sha256": self._digests.get(name),
                    "sha256_on_disk": on_disk, "differs_from_disk": on_disk != self._digests.get(name),
                    "every_s": policy.interval_s, "cron": policy.cron,
                    "rules": [r.name for r in policy.spec.rules],
                    "paused": sorted(r for r in self.paused if r.startswith(f"{name}/")),
                    "last_run_at": report.at if report else None,
                    "last_run_failed": report.failed if report else None,
                })
        return out

    def apply(self, path: str) -> dict[str, Any]:
        """Load (or replace) the policy in ``path``; a running schedule picks it up at once.

        Raises:
            PolicyError: the file is not a valid policy (nothing changes).
        """
        policy = load_policy(path)
        with self._lock:
            self.policies[policy.name] = policy
            self._running.setdefault(policy.name, threading.Lock())
            self._digests[policy.name] = _digest(policy.source)
        if self._scheduler is not None:
            self._schedule(self._scheduler, policy.name, policy, replace=True)
        self.log.info("policy applied", policy=policy.name, source=policy.source)
        return next(p for p in self.loaded() if p["name"] == policy.name)

    def reload(self) -> list[dict[str, Any]]:
        """Apply every loaded policy's file again (all are validated before any is replaced).

        Raises:
            PolicyError: a file is no longer a valid policy (nothing changes).
        """
        sources = [p.source for p in self.policies.values() if p.source]
        for source in sources:
            load_policy(source)
        for source in sources:
            self.apply(source)
        return self.loaded()

    def pause(self, rule: str) -> list[str]:
        """Stop executing ``rule`` ("policy/rule") until ``resume``; its actions are reported ``not_executed``.

        Raises:
            KeyError: no loaded policy has that rule.
        """
        self._rule(rule)
        self.paused.add(rule)
        return sorted(self.paused)

    def resume(self, rule: str) -> list[str]:
        """Execute ``rule`` again (a paused rule is resumed even when its policy is no longer loaded).

        Raises:
            KeyError: the rule is neither paused nor loaded.
        """
        if rule not in self.paused:
            self._rule(rule)
        self.paused.discard(rule)
        return sorted(self.paused)

    def _rule(self, rule: str) -> None:
        name, _, short = rule.partition("/")
        policy = self.policies.get(name)
        if policy is None or short not in {r.name for r in policy.spec.rules}:
            known = [f"{n}/{r.name}" for n, p in sorted(self.policies.items()) for r in p.spec.rules]
            raise KeyError(f"no rule {rule!r}; loaded rules: {', '.join(known) or 'none'}")

    # -------------------------------------------------------------------------------------------- schedule

    def start(self) -> None:
        """Run every policy on its ``schedule`` in a background thread until ``stop``."""
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(daemon=True)
        for name, policy in self.policies.items():
            self._schedule(scheduler, name, policy)
        scheduler.start()
        self._scheduler = scheduler

    def _schedule(self, scheduler: Any, name: str, policy: CompiledPolicy, *, replace: bool = False) -> None:
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        trigger = IntervalTrigger(seconds=policy.interval_s) if policy.interval_s else CronTrigger.from_crontab(policy.cron)
        # One run at a time per policy; a run that is late by more than a period is skipped, not piled up.
        scheduler.add_job(self._scheduled, trigger, args=[name], id=name, max_instances=1, coalesce=True,
                          replace_existing=replace)

    def _scheduled(self, name: str) -> None:
        try:
            self.run_once(name)
        except MemosError as exc:  # a failed evaluation must not kill the schedule; it is logged and retried
            self.log.error("policy evaluation failed", policy=name, code=exc.code, error=exc.message)

    def pending_jobs(self) -> int:
        return len(self._scheduler.get_jobs()) if self._scheduler is not None else 0

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
