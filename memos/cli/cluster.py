"""Running memos: ``up``, ``status``, ``down``, ``run`` a workflow, and ``doctor`` for the data dir."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

from memos.cli import common
from memos.cli.common import print_json, settings_of


def cmd_up(args: argparse.Namespace) -> int:
    from memos.hosting.ray_host import cluster_info, up

    settings = settings_of(args)
    ports = {"dashboard_port": args.dashboard_port, "metrics_export_port": args.metrics_port}
    settings = settings.model_copy(update={k: v for k, v in ports.items() if v is not None})
    if cluster_info(settings) is not None:
        print(f"a memos cluster is already recorded in {settings.cluster_file}; 'memos status' or 'memos down'")
        return 1
    info = up(settings, shards=args.shards or 0, address=args.address)
    if info.get("shards"):
        print(f"memos is up. {info['shards']} kernel shard actors ({', '.join(info['shard_actors'])}) in namespace "
              f"'{info['namespace']}'; placement: {settings.home / 'shards' / 'placement.json'}")
    else:
        print(f"memos is up. kernel actor '{info['kernel_actor']}' in namespace '{info['namespace']}'")
    if info.get("joined"):
        print(f"joined the Ray cluster at {info['address']} ('memos down' stops memos' actors, not the cluster)")
    print(f"Ray dashboard: {info['dashboard_url']}")
    if info.get("metrics_url"):
        print(f"Metrics (Prometheus text): {info['metrics_url']}")
    if info.get("prometheus_targets"):
        print(f"Prometheus file_sd target: {info['prometheus_targets']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from memos.errors import BackendError
    from memos.hosting.ray_host import RayTransport, cluster_info, connect, health_advice, kernel_health

    settings = settings_of(args)
    info = cluster_info(settings)
    if info is None:
        print("memos is not running (no cluster recorded); start it with 'memos up'")
        return 1
    try:
        host = connect(settings)
    except BackendError as exc:
        print(f"memos cluster recorded but not answering: {exc}. Fix: 'memos down' then 'memos up'")
        return 1
    names = info.get("shard_actors") or [info.get("kernel_actor") or settings.kernel_actor]
    actors = [host.actors[f"kernel-{k}"] for k in range(len(names))] if info.get("shards") else [host.actors["kernel"]]
    for k, (name, actor) in enumerate(zip(names, actors, strict=True)):
        what = f"shard {k}" if info.get("shards") else "kernel"
        try:
            health = kernel_health(settings, name)
        except BackendError as exc:
            health = {"state": "UNKNOWN", "restarts": 0, "pid": None, "death_cause": str(exc)}
        try:  # a short ping: status reports, it does not wait out a restart
            ping = RayTransport(actor, retry_for_s=0, timeout_s=10).ping()
        except BackendError as exc:
            print(f"memos cluster recorded but the {what} is not answering: {health_advice(health)} ({exc})")
            return 1
        label = f"{what} ({name})" if info.get("shards") else what
        print(f"memos is running: {label} pid {ping['pid']}, pending index ops {ping['pending_index']}")
        print(health_advice(health))
    if info.get("shards"):
        from memos.storage.placement import Placement

        table = Placement(settings.home)
        counts = [sum(1 for s in table.cubes.values() if s == k) for k in range(table.shards)]
        print("cubes placed per shard: " + ", ".join(f"{k}: {n}" for k, n in enumerate(counts)))
    print(f"Ray dashboard: {info.get('dashboard_url')}")
    print(f"Metrics: {info.get('metrics_url')}")
    from memos.client import Memos

    stats = Memos(host.transport, "system").stats()
    loaded = host.transport.policy_admin("list")
    if loaded:
        from memos.cli.tables import policies_table, show

        show(policies_table(loaded))
    else:
        print("policies: none loaded ('memos policy apply FILE')")
    print_json(stats)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from memos.hosting.ray_host import down

    if down(settings_of(args)):
        print("memos is down")
        return 0
    print("memos was not running")
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    from memos.runtime import Runtime

    path = Path(args.file)
    spec = importlib.util.spec_from_file_location(f"memos_workflow_{path.stem}", path)
    if spec is None or spec.loader is None or not path.exists():
        print(f"cannot load workflow {path}", file=sys.stderr)
        return 2
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as a normal import would be: typing (e.g. LangGraph state TypedDicts under
    # `from __future__ import annotations`) resolves names through sys.modules.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not hasattr(module, "run"):
        print(f"{path} defines no run(runtime) function", file=sys.stderr)
        return 2
    with Runtime.start(settings_of(args), mode=args.mode, dashboard=not args.no_dashboard) as runtime:
        print(f"memos runtime: {runtime.mode}; data dir {runtime.settings.home}")
        if runtime.dashboard_url:
            print(f"Ray dashboard: {runtime.dashboard_url}")
        summary = module.run(runtime)
        if args.json or not hasattr(module, "report"):
            print_json(summary)
        else:
            from rich.console import Console

            console = Console()
            if not console.is_terminal:  # a file or a pipe: wide enough for the report's tables
                console = Console(width=120)
            console.print(module.report(summary))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """SQLite's integrity check and the index outbox; with --repair, the index rebuild, its progress on stderr (a
    live bar in-process; a start and a done line when the kernel runs in the cluster, which cannot call back)."""
    from memos.progress import Progress, format_duration

    phases = {"add": "index: embedding missing entries", "check": "index: checking metadata"}
    with common.open_runtime(args) as runtime:
        service = getattr(runtime.transport, "service", None)  # the KernelService itself when in-process
        if not args.repair:
            report = (service or runtime.transport).doctor()
        elif service is not None:
            with Progress("index", every_s=5.0) as bar:
                report = service.doctor(repair=True, progress=lambda phase, done, total: bar.update(
                    done, total, label=phases.get(phase, f"index: {phase}")))
        else:  # the kernel actor repairs; a progress callback cannot cross Ray
            started = time.monotonic()
            print("doctor: repairing the vector index in the kernel actor ...", file=sys.stderr, flush=True)
            report = runtime.transport.doctor(repair=True)
            print(f"doctor: index repair done in {format_duration(time.monotonic() - started)}", file=sys.stderr,
                  flush=True)
    print_json(report)
    return 0 if report["sqlite_integrity"] == "ok" else 1


def register(sub: Any) -> None:
    p = sub.add_parser("up", help="start a local Ray head, the dashboard and the kernel actor")
    p.add_argument("--dashboard-port", type=int, help="the Ray dashboard's port (default 8265, or MEMOS_DASHBOARD_PORT)")
    p.add_argument("--metrics-port", type=int, help="the metrics export's port (default 8081, or MEMOS_METRICS_PORT)")
    p.add_argument("--shards", type=int, help="run the kernel as N shard actors, cubes placed across them (a data dir "
                                              "of their own: <home>/shards/<k>; docs/operations.md)")
    p.add_argument("--address", help="join the existing Ray cluster at ADDR (host:port) instead of starting a head; "
                                     "it needs the cluster's auth token (docs/operations.md)")
    p.set_defaults(fn=cmd_up)
    sub.add_parser("status", help="is memos running? where is the dashboard?").set_defaults(fn=cmd_status)
    sub.add_parser("down", help="stop what 'memos up' started").set_defaults(fn=cmd_down)

    p = sub.add_parser("run", help="run a workflow file (a module with run(runtime))")
    p.add_argument("file")
    p.add_argument("--mode", default="auto", choices=["auto", "ray", "cluster", "inprocess"])
    p.add_argument("--no-dashboard", action="store_true", help="start the embedded Ray without its dashboard")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON (default: its report)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("doctor", help="check SQLite and the vector index")
    p.add_argument("--repair", action="store_true", help="rebuild missing index entries from SQLite")
    p.set_defaults(fn=cmd_doctor)
