"""The in-process transport: calls a ``KernelService`` in this process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from memos.transports.envelope import unwrap

if TYPE_CHECKING:
    from memos.service import KernelService


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

    def policy_admin(self, command: str, arg: str | None = None) -> Any:
        return self.service.policy_admin(command, arg)

    def shard_admin(self, method: str, *args: Any) -> Any:
        """A cube move's step on this kernel (``export_cube``, ``import_cube``, ``drop_moved_cube``,
        ``discard_copy``: ``memos.kernel.moves``); raises its typed error."""
        return unwrap(getattr(self.service, method)(*args))

    def ping(self) -> dict[str, Any]:
        return self.service.ping()

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        return self.service.doctor(repair)

    def close(self) -> None:
        self.service.close()
