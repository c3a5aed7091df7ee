"""Kernel metrics on Ray's metrics export (Prometheus text; names get Ray's ``ray_`` prefix).

| metric | type | tags | from |
|---|---|---|---|
| memos_syscalls_total | counter | op, outcome (ok or an error code) | every syscall |
| memos_syscall_latency_seconds | histogram | op | every syscall |
| memos_events_total | counter | type (written, updated, migrated, evicted, denied, policy_fired, ...) | every event |
| memos_migrations_total | counter | frm, to, rule (``policy/rule``, "" for a direct migrate) | ``migrated`` events |
| memos_evictions_total | counter | tier (disk: payload dropped; ram: unloaded from the model host), reason | ``evicted`` |
| memos_activation_loads_total | counter | tier (ram: the cache was in the model host's RAM; disk: loaded from disk) | ``activation_used`` |
| memos_adapter_uses_total | counter | stale (true, false) | ``adapter_used`` |
| memos_distillations_total | counter | | ``distilled`` |
| memos_policy_runs_total | counter | policy | every policy evaluation |
| memos_policy_run_seconds | histogram | policy | every policy evaluation |
| memos_policy_actions_total | counter | policy, outcome (ok, not_executed or an error code) | every policy action |
| memos_memories | gauge | cube, kind, state (current versions) | ``refresh_gauges`` |
| memos_bytes | gauge | cube, kind | ``refresh_gauges`` |
| memos_jobs | gauge | op, state (running; and ended jobs still listed: done, cancelled, failed) | ``refresh_jobs`` |
| memos_kernel_heartbeat_timestamp_seconds | gauge | | ``refresh_gauges``: the kernel actor is alive and refreshing |
| memos_budget_limit / memos_budget_used | gauge | scope (``kernel`` or ``policy:<name>``), budget | ``refresh_budgets``: the kernel's activation disk tier (``activation_disk_bytes``, ``activation_memories``) and each loaded policy's ``activation_bytes`` over the cubes it governs |
| memos_distillation_loss | gauge | job | ``refresh_jobs``: the last training loss of each listed distillation (its loss curve over time) |
| memos_policy_info | gauge (1) | policy, source, sha256 (first 16 hex of the policy file as it is on disk now) | ``refresh_policies``: the loaded policies |
| memos_policy_interval_seconds | gauge | policy | ``refresh_policies``: ``schedule.every`` (0 for a cron schedule) |
| memos_policy_last_run_timestamp_seconds / memos_policy_last_success_timestamp_seconds | gauge | policy | every policy evaluation; success: no action failed |
| memos_model_ram_payloads / memos_model_ram_bytes | gauge | | model host: KV payloads in its RAM tier |
| memos_model_gpu_payloads / memos_model_gpu_bytes | gauge | | model host: KV payloads in its GPU tier (0 on a CPU host) |
| memos_model_adapters_loaded | gauge | | model host: adapters ready in its pool (at most its budget) |
| memos_model_adapter_loads_total | counter | | model host: adapters loaded from disk (pool misses) |
| memos_model_distillations_running | gauge | | model host: trainings in progress |

Counters are updated by ``RayMetricsObserver`` from the kernel's observer calls (the kernel stays Ray-free: what a
counter means is read from the event's data here); gauges by ``refresh_gauges`` (the kernel actor calls it on a
timer, with ``refresh_jobs``); the model host's by ``ModelMetrics.refresh`` after each call to the model actor.
Only this module and the rest of memos.hosting import ray.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from memos.kernel import events as ev
from memos.kernel.budget import kept_bytes

LATENCY_BOUNDARIES = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
POLICY_RUN_BOUNDARIES = [0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0]


class RayMetricsObserver:
    """A ``KernelObserver`` that records into ``ray.util.metrics``."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._syscalls = metrics.Counter(
            "memos_syscalls_total", description="Syscalls by op and outcome.", tag_keys=("op", "outcome")
        )
        self._latency = metrics.Histogram(
            "memos_syscall_latency_seconds", description="Syscall latency in the kernel.",
            boundaries=LATENCY_BOUNDARIES, tag_keys=("op",),
        )
        self._events = metrics.Counter("memos_events_total", description="Kernel events by type.", tag_keys=("type",))
        self._migrations = metrics.Counter(
            "memos_migrations_total", description="Memories migrated between kinds, by the policy rule that did it.",
            tag_keys=("frm", "to", "rule"),
        )
        self._evictions = metrics.Counter(
            "memos_evictions_total", description="Derived payloads dropped (disk) or unloaded from the model host (ram).",
            tag_keys=("tier", "reason"),
        )
        self._activation_loads = metrics.Counter(
            "memos_activation_loads_total",
            description="KV caches used by generate: tier ram is a hit in the model host's RAM, disk a load from disk.",
            tag_keys=("tier",),
        )
        self._adapter_uses = metrics.Counter(
            "memos_adapter_uses_total", description="LoRA adapters applied to a generation.", tag_keys=("stale",)
        )
        self._distillations = metrics.Counter(
            "memos_distillations_total", description="Parametric memories (LoRA adapters) distilled."
        )
        self._policy_runs = metrics.Counter(
            "memos_policy_runs_total", description="Lifecycle policy evaluations.", tag_keys=("policy",)
        )
        self._policy_seconds = metrics.Histogram(
            "memos_policy_run_seconds", description="Duration of a policy evaluation, its actions included.",
            boundaries=POLICY_RUN_BOUNDARIES, tag_keys=("policy",),
        )
        self._policy_actions = metrics.Counter(
            "memos_policy_actions_total", description="Actions planned by policies, by outcome.",
            tag_keys=("policy", "outcome"),
        )
        self._memories = metrics.Gauge(
            "memos_memories", description="Memories (current versions) by cube, kind and state.",
            tag_keys=("cube", "kind", "state"),
        )
        self._bytes = metrics.Gauge("memos_bytes", description="Bytes of current versions by cube and kind.",
                                    tag_keys=("cube", "kind"))
        self._seen: set[tuple[str, str, str]] = set()
        self._heartbeat = metrics.Gauge("memos_kernel_heartbeat_timestamp_seconds",
                                        description="When the kernel actor last refreshed its gauges (epoch seconds).")
        self._budget_limit = metrics.Gauge("memos_budget_limit", description="A budget's limit (bytes or memories).",
                                           tag_keys=("scope", "budget"))
        self._budget_used = metrics.Gauge("memos_budget_used", description="What a budget holds now.",
                                          tag_keys=("scope", "budget"))
        self._policy_info = metrics.Gauge("memos_policy_info", description="A loaded policy (1), with its file's hash.",
                                          tag_keys=("policy", "source", "sha256"))
        self._policy_interval = metrics.Gauge("memos_policy_interval_seconds", tag_keys=("policy",),
                                              description="Seconds between a policy's evaluations (0: cron).")
        self._policy_last_run = metrics.Gauge("memos_policy_last_run_timestamp_seconds", tag_keys=("policy",),
                                              description="When the policy was last evaluated (epoch seconds).")
        self._policy_last_ok = metrics.Gauge("memos_policy_last_success_timestamp_seconds", tag_keys=("policy",),
                                             description="When an evaluation of the policy last ended with no failed action.")
        self._loss = metrics.Gauge("memos_distillation_loss", tag_keys=("job",),
                                   description="The last training loss reported by a distillation job.")
        self._jobs = metrics.Gauge("memos_jobs", description="Kernel jobs (long operations) by op and state.",
                                   tag_keys=("op", "state"))
        self._job_series: set[tuple[str, str]] = set()

    def syscall(self, op: str, outcome: str, duration_s: float) -> None:
        self._syscalls.inc(1, {"op": op, "outcome": outcome})
        self._latency.observe(duration_s, {"op": op})

    def event(self, event: ev.KernelEvent) -> None:
        self._events.inc(1, {"type": ev.type_of(event)})
        if isinstance(event, ev.Migrated):
            self._migrations.inc(1, {"frm": event.frm, "to": event.to, "rule": event.rule or ""})
        elif isinstance(event, ev.Evicted):
            self._evictions.inc(1, {"tier": event.tier, "reason": event.reason or ""})
        elif isinstance(event, ev.ActivationUsed):
            self._activation_loads.inc(1, {"tier": event.tier})
        elif isinstance(event, ev.AdapterUsed):
            self._adapter_uses.inc(1, {"stale": "true" if event.stale else "false"})
        elif isinstance(event, ev.Distilled):
            self._distillations.inc(1)

    def policy_run(self, policy: str, duration_s: float, outcomes: Mapping[str, int]) -> None:
        now = time.time()
        self._policy_last_run.set(now, {"policy": policy})
        if all(outcome in ("ok", "not_executed") for outcome, count in outcomes.items() if count):
            self._policy_last_ok.set(now, {"policy": policy})
        self._policy_runs.inc(1, {"policy": policy})
        self._policy_seconds.observe(duration_s, {"policy": policy})
        for outcome, count in outcomes.items():
            if count:
                self._policy_actions.inc(count, {"policy": policy, "outcome": outcome})

    def refresh_budgets(self, rows: list[tuple[str, str, float | None, float]]) -> None:
        """Set ``memos_budget_limit``/``memos_budget_used`` from (scope, budget, limit or None, used) rows (see
        ``budget_rows``); an unlimited budget has no limit series."""
        for scope, budget, limit, used in rows:
            tags = {"scope": scope, "budget": budget}
            if limit is not None:
                self._budget_limit.set(limit, tags)
            self._budget_used.set(used, tags)

    def refresh_policies(self, policies: list[tuple[str, str, str, float]]) -> None:
        """Set ``memos_policy_info`` and ``memos_policy_interval_seconds`` from (name, source, sha256, interval)."""
        for name, source, digest, interval in policies:
            self._policy_info.set(1, {"policy": name, "source": source, "sha256": digest})
            self._policy_interval.set(interval, {"policy": name})

    def refresh_gauges(self, counts: list[tuple[str, str, str, int, int]]) -> None:
        """Set the gauges from ``SqliteStore.counts`` rows; series that vanished are set to 0."""
        self._heartbeat.set(time.time())
        current: set[tuple[str, str, str]] = set()
        size: dict[tuple[str, str], int] = {}
        for cube, kind, state, n, b in counts:
            current.add((cube, kind, state))
            self._memories.set(n, {"cube": cube, "kind": kind, "state": state})
            size[(cube, kind)] = size.get((cube, kind), 0) + b
        for cube, kind, state in self._seen - current:
            self._memories.set(0, {"cube": cube, "kind": kind, "state": state})
        for (cube, kind), b in size.items():
            self._bytes.set(b, {"cube": cube, "kind": kind})
        self._seen = current

    def refresh_jobs(self, jobs: list[Any]) -> None:
        """Set ``memos_jobs`` from the kernel's job table (``memos.kernel.jobs``): the queue of long operations."""
        counts: dict[tuple[str, str], int] = {}
        for job in jobs:
            counts[(job.op, job.state)] = counts.get((job.op, job.state), 0) + 1
            if job.op == "distill" and job.loss is not None:
                self._loss.set(job.loss, {"job": job.id})
        for key in self._job_series - counts.keys():
            counts[key] = 0
        for (op, state), n in counts.items():
            self._jobs.set(n, {"op": op, "state": state})
        self._job_series = set(counts)


def budget_rows(kernel: Any, policies: Iterable[Any]) -> list[tuple[str, str, float | None, float]]:
    """(scope, budget, limit, used) of the kernel's activation disk tier (current caches and the kept caches of older
    versions, as ``memos.kernel.budget`` counts them) and of each policy's ``activation_bytes`` budget over the cubes
    it governs (the bytes of current activation payloads)."""
    rows = kernel.store.current_of_kind("activation")
    sizes = [(r.cube, r.payload["size_bytes"]) for r in rows if r.payload]
    budgets = kernel.budgets
    out: list[tuple[str, str, float | None, float]] = [
        ("kernel", "activation_disk_bytes", budgets.disk_bytes, float(sum(b for _, b in sizes) + kept_bytes(kernel.store))),
        ("kernel", "activation_memories", budgets.max_memories, float(len(rows))),
    ]
    for policy in policies:
        limit = policy.spec.budgets.activation_bytes
        if limit is not None:
            used = sum(b for cube, b in sizes if policy.governs(cube))
            out.append((f"policy:{policy.name}", "activation_bytes", float(limit), float(used)))
    return out


def policy_rows(policies: Iterable[Any]) -> list[tuple[str, str, str, float]]:
    """(name, source, sha256 of the source file as it is now on disk, interval) of each loaded policy."""
    out = []
    for policy in policies:
        source = policy.source or ""
        try:
            digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else ""
        except OSError:
            digest = "unreadable"
        out.append((policy.name, source, digest, float(policy.interval_s or 0.0)))
    return out


class ModelMetrics:
    """The model host actor's gauges and counters (RAM tier, adapter pool, trainings)."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._ram_payloads = metrics.Gauge("memos_model_ram_payloads", description="KV payloads in the model host's RAM tier.")
        self._ram_bytes = metrics.Gauge("memos_model_ram_bytes", description="Bytes of KV payloads in the model host's RAM.")
        self._gpu_payloads = metrics.Gauge("memos_model_gpu_payloads", description="KV payloads in the model host's GPU tier.")
        self._gpu_bytes = metrics.Gauge("memos_model_gpu_bytes", description="Bytes of KV payloads in the model host's GPU tier.")
        self._adapters = metrics.Gauge("memos_model_adapters_loaded", description="LoRA adapters ready on the model host.")
        self._adapter_loads = metrics.Counter("memos_model_adapter_loads_total",
                                              description="Adapters loaded from disk by the model host (pool misses).")
        self._distilling = metrics.Gauge("memos_model_distillations_running",
                                         description="Distillations training on the model host.")
        self._loads_seen = 0

    def refresh(self, usage: Mapping[str, int]) -> None:
        """From ``ModelService.ram_usage()``."""
        self._ram_payloads.set(usage.get("payloads", 0))
        self._ram_bytes.set(usage.get("bytes", 0))
        self._gpu_payloads.set(usage.get("gpu_payloads", 0))
        self._gpu_bytes.set(usage.get("gpu_bytes", 0))
        self._adapters.set(usage.get("adapters", 0))
        self._distilling.set(usage.get("distillations_running", 0))
        loads = usage.get("adapter_loads", 0)
        if loads > self._loads_seen:
            self._adapter_loads.inc(loads - self._loads_seen)
            self._loads_seen = loads
