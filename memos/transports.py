"""Transports carry syscalls to a kernel and typed results or typed errors back.

On the wire a call is ``(principal, syscall as a JSON dict, trace_id)`` and the answer an envelope:
``{"ok": <result as JSON>}`` or ``{"error": {"code", "message", "details"}}``. Every transport (in-process, Ray
actor, HTTP) speaks this envelope, so the client is the same over all of them and errors keep their types.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel

from memos.errors import MemosError, NotFound, error_from_wire


class Transport(Protocol):
    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        """Execute one syscall; return the envelope. Never raises MemosError (it travels in the envelope)."""
        ...

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


def envelope(execute: Any, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
    """Run ``execute`` and wrap its result or typed error."""
    try:
        result: BaseModel = execute(principal, syscall, trace_id=trace_id)
    except MemosError as exc:
        return {"error": exc.to_wire()}
    return {"ok": result.model_dump(mode="json")}


def unwrap(answer: dict[str, Any]) -> Any:
    """The ``ok`` payload of an envelope, or raise the typed error it carries."""
    if "error" in answer:
        raise error_from_wire(answer["error"])
    return answer["ok"]


class KernelService:
    """A kernel behind the envelope, with its policy scheduler. Plain class: the Ray actor and the in-process
    transport both wrap it. What each policy evaluation did reaches the kernel's observers and event outbox through
    ``record_policy_run`` (the scheduler itself knows nothing of the kernel)."""

    def __init__(self, kernel: Any, policies: Any = None) -> None:
        self.kernel = kernel
        self.policies = policies  # a memos.schedulers.runner.PolicyRunner, or None
        if policies is not None and policies.on_report is None:
            policies.on_report = self.record_policy_run
        # Reads are counted in memory (memos.kernel.reads); this thread writes them every few seconds even when no
        # syscall comes to do it. It holds the kernel weakly: a service dropped without close() lets it end.
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=_flush_reads_loop, args=(weakref.ref(kernel), self._stop),
            name="memos-read-flush", daemon=True,
        )
        self._flusher.start()

    @classmethod
    def with_policies(cls, kernel: Any, paths: Any, *, start: bool = True) -> KernelService:
        """The service with a scheduler for the policy files ``paths`` (started on their schedules if ``start``).

        Raises:
            PolicyError: a policy file is invalid (file, line, key).
        """
        from memos.schedulers.runner import PolicyRunner

        runner = PolicyRunner.from_files(kernel.execute, [str(p) for p in paths]) if paths else None
        if runner is not None and start:
            runner.start()
        return cls(kernel, runner)

    def run_policy(self, name: str | None = None) -> list[dict[str, Any]]:
        """Evaluate one policy (or all) now and execute its actions; returns the run reports as dicts."""
        from dataclasses import asdict

        if self.policies is None:
            return []
        names = [name] if name else list(self.policies.policies)
        try:
            return [asdict(self.policies.run_once(n)) for n in names]
        except KeyError as exc:
            raise NotFound(f"no policy named {name!r}; loaded: {sorted(self.policies.policies)}") from exc

    def record_policy_run(self, report: Any) -> None:
        """Report one policy evaluation (a ``RunReport``): to every observer (``policy_run``), and, if it planned
        any action, to the event outbox as a ``policy_fired`` event plus a ``job_failed`` event per failed action.

        An event lands in the cube its actions touched (None, superusers only, when they span several cubes). The
        actions already ran: a failure to record them is logged, not raised.
        """
        from memos.kernel import events as ev
        from memos.schedulers.runner import SCHEDULER_PRINCIPAL

        outcomes = dict(Counter(o.outcome for o in report.outcomes))
        self.kernel.deliver(policy_run=(report.policy, report.duration_s, outcomes))
        if not report.planned:
            return
        cubes = {o.cube for o in report.outcomes if o.cube}
        try:
            self.kernel.record_event(ev.PolicyFired(
                cube=cubes.pop() if len(cubes) == 1 else None, principal=SCHEDULER_PRINCIPAL, policy=report.policy,
                planned=report.planned, ok=report.ok, failed=report.failed, not_executed=report.not_executed,
                duration_ms=round(report.duration_s * 1000, 1), rules=dict(Counter(o.rule for o in report.outcomes)),
            ))
            for o in report.outcomes:
                if o.failed:
                    self.kernel.record_event(ev.JobFailed(
                        cube=o.cube or None, memory_id=o.memories[0] if len(o.memories) == 1 else None,
                        principal=SCHEDULER_PRINCIPAL, policy=report.policy, op=o.op, rule=o.rule, code=o.outcome,
                        message=o.detail, memories=list(o.memories),
                    ))
        except MemosError as exc:
            self.kernel.log.error("policy run not recorded as events", policy=report.policy, code=exc.code,
                                  error=exc.message)

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        return envelope(self.kernel.execute, principal, syscall, trace_id)

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.call(principal, s) for s in syscalls]

    def ping(self) -> dict[str, Any]:
        return {"ok": True, "pid": __import__("os").getpid(), "pending_index": self.kernel.store.pending_index_count()}

    def doctor(self, repair: bool = False, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """SQLite's integrity check and the index outbox; with ``repair``, a deep reconcile of the vector index
        (``progress(phase, done, total)`` is called as it goes; in-process only, a callback does not cross Ray)."""
        report = self.kernel.indexer.reconcile(deep=True, progress=progress) if repair else None
        return {
            "sqlite_integrity": self.kernel.store.integrity_check(),
            "pending_index": self.kernel.store.pending_index_count(),
            "reconcile": None if report is None else {
                "expected": report.expected, "indexed": report.indexed, "added": report.added,
                "removed": report.removed, "fixed_metadata": report.fixed_metadata,
            },
        }

    def close(self) -> None:
        if self.policies is not None:
            self.policies.stop()
        self._stop.set()
        self._flusher.join(timeout=10)
        self.kernel.close()  # writes the reads still pending


def _flush_reads_loop(kernel_ref: weakref.ref[Any], stop: threading.Event) -> None:
    while not stop.wait(0.5):
        kernel = kernel_ref()
        if kernel is None:
            return
        if kernel.reads.due():  # the kernel's flush interval has passed since its last flush
            try:
                kernel.flush_reads()
            except MemosError as exc:  # they stay pending; the next flush (or close) retries
                kernel.log.error("read counters not flushed", error=exc.message)
        del kernel


class InProcessTransport:
    """Calls a kernel in this process (tests, embedded use, the CLI when no cluster runs)."""

    def __init__(self, service: KernelService) -> None:
        self.service = service

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        return self.service.call(principal, syscall, trace_id)

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.service.call_batch(principal, syscalls)

    def run_policy(self, name: str | None = None) -> list[dict[str, Any]]:
        return self.service.run_policy(name)

    def close(self) -> None:
        self.service.close()
