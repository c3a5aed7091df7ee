"""The Ray transport: envelope calls to the kernel actor (``memos.hosting.ray_host.KernelActor``), resent safely while
Ray restarts it. ``ray`` is imported when a call is made (this module is light to import)."""

from __future__ import annotations

import time
from typing import Any

from memos.errors import BackendError
from memos.syscalls import retry_safe
from memos.transports.envelope import unwrap

#: How long the Ray transport keeps resending a retry-safe call while the kernel actor restarts.
RETRY_FOR_S = 120.0


class RayTransport:
    """Envelope calls to the kernel actor, resent safely while Ray restarts it.

    When the actor's process dies, a call in flight fails and calls made meanwhile wait for the restart. A call whose
    answer was lost is resent, for up to ``retry_for_s``, only if resending cannot do it twice
    (``memos.syscalls.retry_safe``: reads, and writes, which carry an idempotency key); any other call fails with
    ``BackendError`` saying it may or may not have committed. ``retries`` counts the resends (for benchmarks).
    """

    def __init__(self, actor: Any, *, retry_for_s: float = RETRY_FOR_S, timeout_s: float | None = None) -> None:
        self.actor = actor
        self.retry_for_s = retry_for_s
        self.timeout_s = timeout_s  # per call; None waits as long as the call takes (a distillation takes minutes)
        self.retries = 0

    def _get(self, submit: Any, *, safe: bool) -> Any:
        import ray

        deadline = time.monotonic() + self.retry_for_s
        pause = 0.05
        while True:
            try:
                return ray.get(submit(), timeout=self.timeout_s)
            except ray.exceptions.RayActorError as exc:
                if exc.actor_init_failed:  # its constructor raised: Ray does not restart it, waiting is pointless
                    raise BackendError(f"the kernel actor failed to start ('memos status' tells why): {exc}") from exc
                if not safe:
                    raise BackendError(
                        f"the kernel actor died during this call, which may or may not have committed (look before "
                        f"repeating it; Ray restarts the kernel, 'memos status' shows it): {exc}", restarting=True,
                    ) from exc
                if time.monotonic() >= deadline:
                    raise BackendError(f"kernel actor unreachable for {self.retry_for_s:.0f} s ('memos status' tells "
                                       f"why): {exc}") from exc
            except ray.exceptions.RayError as exc:
                raise BackendError(f"kernel actor unreachable: {exc}") from exc
            self.retries += 1
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        return self._get(lambda: self.actor.call.remote(principal, syscall, trace_id), safe=retry_safe(syscall))

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._get(lambda: self.actor.call_batch.remote(principal, syscalls),
                         safe=all(retry_safe(s) for s in syscalls))

    def ping(self) -> dict[str, Any]:
        return self._get(lambda: self.actor.ping.remote(), safe=True)

    def run_policy(self, name: str | None = None) -> list[dict[str, Any]]:
        answer = self._get(lambda: self.actor.run_policy_envelope.remote(name), safe=False)
        return unwrap(answer)

    def policy_admin(self, command: str, arg: str | None = None) -> Any:
        answer = self._get(lambda: self.actor.policy_admin_envelope.remote(command, arg), safe=False)
        return unwrap(answer)

    def shard_admin(self, method: str, *args: Any) -> Any:
        """A cube move's step on this kernel shard (``memos.kernel.moves``); never resent (the move's journal
        decides what to redo)."""
        return unwrap(self._get(lambda: self.actor.shard_admin.remote(method, *args), safe=False))

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        return self._get(lambda: self.actor.doctor.remote(repair), safe=True)

    def close(self) -> None:
        """The actor belongs to the Ray host, not to this transport; nothing to release here."""
