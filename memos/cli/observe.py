"""Watching memos: ``stats``, ``audit``, ``events [--follow]``, ``top``, and the jobs table (``jobs``, ``cancel``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from memos.cli import common
from memos.cli.common import add_principal, print_json
from memos.kernel import events as ev


def cmd_observe(args: argparse.Namespace) -> int:
    with common.open_runtime(args) as runtime:
        mem = common.client(runtime, args.principal)
        if args.command == "stats":
            print_json(mem.stats())
        elif args.command == "audit":
            print_json(mem.audit(args.cube, limit=args.limit))
        elif args.command == "events":
            return _events(mem, args)
        elif args.command == "jobs":
            jobs = mem.jobs(running_only=args.running)
            if args.json:
                print_json(jobs)
            else:
                from memos.cli.tables import jobs_table, show

                show(jobs_table(jobs), empty="no jobs you may see (running or recently ended)")
        elif args.command == "cancel":
            print_json(mem.cancel(args.job_id))
    return 0


def _cursor(text: str) -> int | str:
    """An events cursor from the command line: a sequence number, or a kernel-shard cursor (``shards:3,7``)."""
    if text.isdigit():
        return int(text)
    if text.startswith("shards:") and all(x.isdigit() for x in text.removeprefix("shards:").split(",")):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a cursor: a sequence number, or shards:<seq>,<seq>,...")


def _events(mem: Any, args: argparse.Namespace) -> int:
    """Print events as JSON lines; with --follow, keep polling for new ones until interrupted."""
    since, tail = args.since, args.tail
    while True:
        if tail:  # the first batch: the newest N
            batch, tail = mem.events(since, limit=tail, types=args.types, latest=True), None
        else:
            batch = mem.events(since, limit=args.limit, types=args.types)
        for event in batch.events:
            print(json.dumps(event.model_dump(mode="json"), ensure_ascii=False), flush=True)
        since = batch.next_seq
        if not args.follow:
            return 0
        if not batch.events:
            try:
                time.sleep(args.interval)
            except KeyboardInterrupt:
                return 0


TOP_MOVES = ("migrated", "evicted", "purged", "migration_rolled_back")  # event types of "recent migrations"


TOP_RUNS = ("policy_fired", "job_failed")  # event types of "recent policy runs"


def cmd_top(args: argparse.Namespace) -> int:
    """A refreshing terminal summary: memories by kind and state, bytes by tier, syscall rate and latency, recent
    migrations and evictions, recent policy runs. Ctrl-C to stop; --once prints one frame."""
    with common.open_runtime(args) as runtime:
        mem = common.client(runtime, args.principal)
        last_counts, last_at = None, None
        while True:
            stats = mem.stats()
            recent = mem.events(types=TOP_MOVES, limit=8, latest=True).events
            runs = mem.events(types=TOP_RUNS, limit=6, latest=True).events
            now = time.monotonic()
            total = sum(stats.syscalls.values())
            rate = (total - last_counts) / (now - last_at) if last_counts is not None and now > last_at else 0.0
            last_counts, last_at = total, now
            jobs = list(mem.jobs())
            print(_top_frame(stats, rate, recent, runs, jobs), end="" if args.once else "\n", flush=True)
            if args.once:
                return 0
            try:
                time.sleep(args.interval)
            except KeyboardInterrupt:
                return 0
            if sys.stdout.isatty():  # redraw in place on a terminal; into a file, frames follow each other
                print("\x1b[2J\x1b[H", end="")


def _top_frame(stats: Any, rate: float, recent: list[Any], runs: list[Any], jobs: list[Any] | None = None) -> str:
    lines = [f"memos top   cubes {stats.cubes}   versions {stats.versions}   syscalls {sum(stats.syscalls.values())}"
             f" ({rate:.1f}/s)", "", f"{'kind':<12}{'state':<10}{'memories':>10}{'bytes':>14}"]
    for kind, states in sorted(stats.memories.items()):
        for state, count in sorted(states.items()):
            lines.append(f"{kind:<12}{state:<10}{count:>10}{'':>14}")
        lines.append(f"{kind:<12}{'(all)':<10}{sum(states.values()):>10}{stats.bytes.get(kind, 0):>14}")
    lines += ["", f"{'syscall':<18}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}"]
    for op, count in sorted(stats.syscalls.items(), key=lambda kv: -kv[1])[:12]:
        lat = stats.latency_ms.get(op, {})
        lines.append(f"{op:<18}{count:>8}{lat.get('p50', 0):>10.2f}{lat.get('p95', 0):>10.2f}")
    lines += ["", "recent migrations and evictions:"]
    for e in recent or []:
        event = typed(e)
        rule = getattr(event, "rule", None)
        if isinstance(event, ev.Migrated):
            what = f"{event.frm}->{event.to}"
        else:
            what = getattr(event, "reason", None) or ""
        lines.append(f"  {e.at:%H:%M:%S} {e.type:<10} {e.memory_id} {what}" + (f" rule={rule}" if rule else ""))
    if not recent:
        lines.append("  (none yet)")
    lines += ["", "recent policy runs:", *_policy_run_lines(runs)]
    lines += ["", "jobs (long operations):", *_job_lines(jobs or [])]
    return "\n".join(lines) + "\n"


def typed(e: Any) -> ev.KernelEvent:
    """A wire event (``memos.types.Event``) as its type (``memos.kernel.events``), read by attribute."""
    return ev.from_record(e.type, e.cube, e.memory_id, e.principal, e.data)


def _job_lines(jobs: list[Any]) -> list[str]:
    """Running jobs, then the last few that ended, as lines of ``memos top``."""
    running = [j for j in jobs if j.state == "running"]
    ended = [j for j in jobs if j.state != "running"][-3:]
    lines = []
    for j in [*running, *ended]:
        progress = f"{j.step}/{j.total}" if j.total else str(j.step)
        loss = f" loss {j.loss:.3f}" if j.loss is not None else ""
        rule = f" rule={j.rule}" if j.rule else ""
        lines.append(f"  {j.started_at:%H:%M:%S} {j.id} {j.op:<8} {j.state:<9} {j.phase:<17} {progress:>9}{loss}"
                     f"  by {j.principal}{rule}" + (f"  [{j.error}]" if j.error else ""))
    return lines or ["  (none)"]


def _policy_run_lines(runs: list[Any]) -> list[str]:
    """``policy_fired`` events (one per evaluation that planned something) and ``job_failed`` events (a failed action)
    as lines of ``memos top``."""
    lines = []
    for e in runs:
        event = typed(e)
        if isinstance(event, ev.PolicyFired):
            counts = f"planned {event.planned}, ok {event.ok}, failed {event.failed}"
            if event.not_executed:
                counts += f", not executed {event.not_executed}"
            rules = ", ".join(f"{rule} x{n}" for rule, n in sorted((event.rules or {}).items()))
            lines.append(f"  {e.at:%H:%M:%S} {event.policy:<16} {counts}  {event.duration_ms:.0f} ms"
                         + (f"  [{rules}]" if rules else ""))
        elif isinstance(event, ev.JobFailed):
            lines.append(f"  {e.at:%H:%M:%S}   failed {event.op} {e.memory_id or ''} rule={event.rule}"
                         f" [{event.code}] {event.message}"[:160])
        else:  # a record this version cannot read as its type
            lines.append(f"  {e.at:%H:%M:%S}   {e.type} {e.memory_id or ''} {e.data}"[:160])
    return lines or ["  (none yet)"]


def register(sub: Any) -> None:
    def observe_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        add_principal(p)
        p.set_defaults(fn=cmd_observe)
        return p

    observe_parser("stats", "memories by kind and state")
    p = observe_parser("audit", "the audit log of a cube (admin)")
    p.add_argument("cube", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p = observe_parser("events", "kernel events as JSON lines")
    p.add_argument("--since", type=_cursor, default=0, metavar="CURSOR",
                   help="events after this cursor: a sequence number, or over kernel shards the next_seq printed "
                        "by a previous page (shards:<seq>,<seq>,...)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--type", dest="types", action="append", default=[], metavar="TYPE",
                   help="only events of this type (repeatable): written, migrated, policy_fired, job_failed, ...")
    p.add_argument("--tail", type=int, metavar="N", help="start with the newest N events, as tail -f does")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events (Ctrl-C to stop)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")

    p = observe_parser("top", "a refreshing summary: memories, bytes, syscall rate and latency, migrations")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(fn=cmd_top)

    p = observe_parser("jobs", "long operations (distillations, migrations) running or recently ended")
    p.add_argument("--running", action="store_true", help="only the running ones")
    p.add_argument("--json", action="store_true", help="the jobs as JSON (default: a table)")
    p = observe_parser("cancel", "stop a running job (it commits nothing)")
    p.add_argument("job_id")
