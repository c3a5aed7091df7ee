"""Transports carry syscalls to a kernel and typed results or typed errors back.

On the wire a call is ``(principal, syscall as a JSON dict, trace_id)`` and the answer an envelope:
``{"ok": <result as JSON>}`` or ``{"error": {"code", "message", "details"}}``. Every transport (in-process, Ray
actor, HTTP) speaks this envelope, so the client is the same over all of them and errors keep their types.
"""

from __future__ import annotations

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
    transport both wrap it."""

    def __init__(self, kernel: Any, policies: Any = None) -> None:
        self.kernel = kernel
        self.policies = policies  # a memos.schedulers.runner.PolicyRunner, or None

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

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        return envelope(self.kernel.execute, principal, syscall, trace_id)

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self.call(principal, s) for s in syscalls]

    def ping(self) -> dict[str, Any]:
        return {"ok": True, "pid": __import__("os").getpid(), "pending_index": self.kernel.store.pending_index_count()}

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        report = self.kernel.indexer.reconcile(deep=True) if repair else None
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
        self.kernel.close()


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
