"""``KernelService``: a kernel behind the envelope, with its policy scheduler and read flusher; and ``open_service``,
the one function that builds it on a data dir (used by ``Runtime``, ``Memos.embedded`` and the Ray ``KernelActor``).

Every transport (``memos.transports``) reaches a kernel through a service: the in-process one calls it directly, the
Ray actor holds one, the HTTP server calls one of those transports.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from memos.errors import MemosError, NotFound
from memos.transports.envelope import envelope

if TYPE_CHECKING:
    from memos.config import Settings
    from memos.models.port import ModelPort


class KernelService:
    """A kernel behind the envelope, with its policy scheduler. Plain class: the Ray actor and the in-process
    transport both wrap it. What each policy evaluation did reaches the kernel's observers and event outbox through
    ``record_policy_run`` (the scheduler itself knows nothing of the kernel)."""

    def __init__(self, kernel: Any, policies: Any = None) -> None:
        self.kernel = kernel
        self.policies = policies  # a memos.schedulers.runner.PolicyRunner, or None
        if policies is not None:
            if policies.on_report is None:
                policies.on_report = self.record_policy_run
            policies.paused.update(self._stored_pauses())
        # Reads are counted in memory (memos.kernel.reads); this thread writes them every few seconds even when no
        # syscall comes to do it. It holds the kernel weakly: a service dropped without close() lets it end.
        # The same thread samples the activation tier and syscall latency over time (memos.kernel.samples).
        from memos.kernel.samples import Sampler

        self.sampler = Sampler()
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=_flush_reads_loop, args=(weakref.ref(kernel), self._stop, self.sampler),
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

    POLICY_COMMANDS = ("list", "apply", "reload", "pause", "resume")

    def policy_admin(self, command: str, arg: str | None = None) -> Any:
        """The policy lifecycle of the running scheduler: ``list`` (loaded policies, hashes, paused rules),
        ``apply`` FILE (load or replace a policy now), ``reload`` (re-read every loaded file), ``pause`` /
        ``resume`` RULE ("policy/rule"). The file of ``apply`` is read by the process that owns the kernel.

        Raises:
            PolicyError: an invalid policy file (nothing changes). NotFound: an unknown rule. InvalidSyscall: an
                unknown command or a missing argument.
        """
        from memos.errors import InvalidSyscall

        if command not in self.POLICY_COMMANDS:
            raise InvalidSyscall(f"unknown policy command {command!r}; one of {', '.join(self.POLICY_COMMANDS)}")
        if command in ("apply", "pause", "resume") and not arg:
            raise InvalidSyscall(f"policy {command} needs {'a file' if command == 'apply' else 'a rule (policy/rule)'}")
        if self.policies is None:
            if command != "apply":
                return [] if command in ("list", "reload") else self._no_rule(arg)
            from memos.schedulers.runner import PolicyRunner

            self.policies = PolicyRunner(self.kernel.execute, [], on_report=self.record_policy_run)
            self.policies.paused.update(self._stored_pauses())
            self.policies.start()
        runner = self.policies
        if command == "list":
            return runner.loaded()
        if command == "apply":
            applied = runner.apply(str(arg))
            self._store_applied({**self._stored_applied(), applied["name"]: applied["source"]})
            return applied
        if command == "reload":
            return runner.reload()
        try:
            paused = runner.pause(str(arg)) if command == "pause" else runner.resume(str(arg))
        except KeyError as exc:
            raise NotFound(str(exc.args[0])) from exc
        self._store_pauses(paused)
        return paused

    def _no_rule(self, rule: str | None) -> Any:
        if rule in self._stored_pauses():  # paused before a restart that loaded no policy: resume still clears it
            self._store_pauses(sorted(self._stored_pauses() - {rule}))
            return sorted(self._stored_pauses())
        raise NotFound(f"no rule {rule!r}; no policies are loaded")

    # Paused rules outlive the process (a restarted kernel actor keeps them paused): the home's meta table holds
    # them, written by pause/resume and read when the scheduler is built. A paused rule of a policy that is not
    # loaded now stays paused for when it is applied again.
    PAUSED_KEY = "policy_paused"

    def _stored_pauses(self) -> set[str]:
        import json

        raw = self.kernel.store.get_meta(self.PAUSED_KEY)
        return set(json.loads(raw)) if raw else set()

    def _store_pauses(self, paused: list[str]) -> None:
        import json

        with self.kernel.store.transaction():
            self.kernel.store.set_meta(self.PAUSED_KEY, json.dumps(sorted(paused)))

    # Policies loaded with `apply` (name -> file), so that a kernel actor Ray restarts after its process died loads
    # them again (restore_applied); a fresh `memos up` starts from MEMOS_POLICIES instead (forget_applied).
    APPLIED_KEY = "policy_applied"

    def _stored_applied(self) -> dict[str, str]:
        import json

        raw = self.kernel.store.get_meta(self.APPLIED_KEY)
        return dict(json.loads(raw)) if raw else {}

    def _store_applied(self, applied: dict[str, str]) -> None:
        import json

        with self.kernel.store.transaction():
            self.kernel.store.set_meta(self.APPLIED_KEY, json.dumps(dict(sorted(applied.items()))))

    def restore_applied(self) -> list[str]:
        """Load again the policies an earlier process of this home loaded with ``apply`` (a restarted kernel actor)
        and that are not loaded now; returns their names. A file that is gone or no longer a valid policy is
        logged and forgotten: the restart must not fail on it."""
        from memos.errors import PolicyError

        stored = self._stored_applied()
        loaded = set(self.policies.policies) if self.policies is not None else set()
        restored, kept = [], dict(stored)
        for name, source in stored.items():
            if name in loaded:
                continue
            try:
                self.policy_admin("apply", source)
                restored.append(name)
            except PolicyError as exc:
                self.kernel.log.error("applied policy not restored", policy=name, source=source, error=exc.message)
                kept.pop(name)
        self._store_applied(kept)
        return restored

    def forget_applied(self) -> None:
        """Start from the configured policies only (a fresh ``memos up``): the ``apply`` of an earlier run is gone."""
        if self._stored_applied():
            self._store_applied({})

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

    # Moving a cube between kernel shards (memos.kernel.moves; run by ShardRouter.move_cube). Envelopes, so a typed
    # error crosses Ray as it does for syscalls.

    def export_cube(self, cube: str) -> dict[str, Any]:
        from memos.kernel.moves import export_cube

        return _enveloped(lambda: export_cube(self.kernel, cube))

    def import_cube(self, exported: dict[str, Any]) -> dict[str, Any]:
        from memos.kernel.moves import import_cube

        return _enveloped(lambda: import_cube(self.kernel, exported))

    def drop_moved_cube(self, cube: str, fingerprint: Any) -> dict[str, Any]:
        from memos.kernel.moves import drop_moved_cube

        return _enveloped(lambda: drop_moved_cube(self.kernel, cube, fingerprint))

    def discard_copy(self, cube: str) -> dict[str, Any]:
        from memos.kernel.moves import discard_copy

        return _enveloped(lambda: discard_copy(self.kernel, cube))

    def close(self) -> None:
        if self.policies is not None:
            self.policies.stop()
        self._stop.set()
        self._flusher.join(timeout=10)
        self.kernel.close()  # writes the reads still pending


def _enveloped(fn: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except MemosError as exc:
        return {"error": exc.to_wire()}


def _flush_reads_loop(kernel_ref: weakref.ref[Any], stop: threading.Event, sampler: Any) -> None:
    import time

    next_sample = time.monotonic() + sampler.every_s
    while not stop.wait(0.5):
        kernel = kernel_ref()
        if kernel is None:
            return
        if kernel.reads.due():  # the kernel's flush interval has passed since its last flush
            try:
                kernel.flush_reads()
            except MemosError as exc:  # they stay pending; the next flush (or close) retries
                kernel.log.error("read counters not flushed", error=exc.message)
        if time.monotonic() >= next_sample:
            next_sample = time.monotonic() + sampler.every_s
            try:
                sampler.record(kernel)
            except MemosError as exc:  # a lost sample is a gap in a chart; the next one comes on time
                kernel.log.error("kernel sample not recorded", error=exc.message)
        del kernel


def lazy_model(settings: Settings) -> ModelPort | None:
    """The in-process model host for ``settings.model`` (loaded by the first call that needs it), or None."""
    if settings.model is None:
        return None
    from memos.models.service import LazyModelService

    return LazyModelService(settings)


def shard_settings(settings: Settings, shard: int) -> Settings:
    """The settings of kernel shard ``shard`` of a sharded data dir: its own data dir (``<home>/shards/<k>``,
    ``memos.storage.placement``), kernel actor name and index collection (on a shared Chroma server each shard needs
    its own)."""
    from memos.storage.placement import shard_home

    return settings.model_copy(update={
        "home": shard_home(settings.home, shard), "kernel_actor": f"{settings.kernel_actor}-shard-{shard}",
        "chroma_collection": f"{settings.chroma_collection}-shard-{shard}",
    })


def open_transport(settings: Settings, *, model: ModelPort | None, owner: str, policies: bool = True) -> Any:
    """An in-process transport to the kernel of ``settings.home``: one service (``InProcessTransport``), or, on a
    sharded data dir, every shard's service behind a ``ShardRouter`` (``memos.transports.router``).

    Raises:
        DataDirInUse: another process owns the data dir (or a shard's).
    """
    from memos.storage.placement import Placement
    from memos.transports import InProcessTransport

    if not Placement.exists(settings.home):
        return InProcessTransport(open_service(settings, model=model, owner=owner, policies=policies))
    from memos.transports.router import ShardRouter

    table, services = Placement(settings.home), []
    try:
        for k in range(table.shards):
            services.append(open_service(shard_settings(settings, k), model=model, owner=f"{owner} (shard {k})",
                                         policies=policies))
    except BaseException:
        for service in services:
            service.close()
        raise
    return ShardRouter([InProcessTransport(s) for s in services], table)


def open_service(
    settings: Settings, *, model: ModelPort | None, owner: str, lock_wait_s: float = 0.0, policies: bool = True,
) -> KernelService:
    """The kernel that owns ``settings.home`` (``memos.kernel.factory.open_kernel``: it takes the data dir's lock as
    ``owner``, waiting up to ``lock_wait_s``) behind a service; with ``policies``, the scheduler of
    ``settings.policies``, started.

    Raises:
        DataDirInUse: another process owns the data dir.
        PolicyError: a policy file is invalid.
    """
    from memos.errors import DataDirInUse
    from memos.kernel.factory import open_kernel
    from memos.storage.placement import Placement

    if Placement.exists(settings.home):
        raise DataDirInUse(f"{settings.home} is a sharded data dir (shards/placement.json): its kernels own "
                           "shards/<k>; open it with Runtime.start, Memos.embedded or 'memos up --shards N', which "
                           "open every shard behind the router", home=str(settings.home))
    kernel = open_kernel(settings, model=model, owner=owner, lock_wait_s=lock_wait_s)
    return KernelService.with_policies(kernel, settings.policies) if policies else KernelService(kernel)
