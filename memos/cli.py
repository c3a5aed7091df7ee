"""The ``memos`` command.

    memos up | status | down           a local Ray head with the dashboard and the kernel actor
    memos run FILE                     run a workflow (a module with ``run(runtime)``), print its summary
    memos cubes | search | read | history | write | stats | events | audit    one syscall each
    memos cube create | grant | revoke                                       cubes and their rights
    memos ingest CUBE --file conversation.json                               extract memories, show the decisions
    memos migrate | context | generate                                       activation memory and the model
    memos distill | jobs | cancel                                            parametric memory, long operations
    memos policy check | explain | run                                       lifecycle policies
    memos top | events --follow                                              live views
    memos doctor [--repair]            check SQLite and the vector index; rebuild the index from SQLite
    memos serve [--mcp] [--tls-cert C --tls-key K]   the HTTP API (and MCP over HTTP) for API keys
    memos mcp                          an MCP server on stdio, acting as the key in $MEMOS_API_KEY
    memos keys add|revoke PRINCIPAL    API keys, stored as hashes in <home>/keys.yaml
    memos bench retrieval | extraction ...   benchmarks (see docs/)

Commands that touch memory go through the running cluster if ``memos up`` started one, else open the data dir in
this process (only one process may own it).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from memos.config import Settings
from memos.errors import InvalidSyscall, MemosError

DEFAULT_PRINCIPAL = "user:cli"


def _print(obj: Any) -> None:
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, tuple | list):
        obj = [o.model_dump(mode="json") if hasattr(o, "model_dump") else o for o in obj]
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env(home=Path(args.home).expanduser() if getattr(args, "home", None) else None)


def _open(args: argparse.Namespace, *, mode: str = "local") -> Any:
    """A runtime for one CLI command: the running cluster if any; else the `memos serve` that owns the data dir,
    over HTTP, when $MEMOS_API_KEY is set; else the kernel in this process (which fails with ``DataDirInUse``,
    naming the owner, if another process owns the data dir)."""
    from memos.hosting.ray_host import cluster_info
    from memos.runtime import Runtime

    settings = _settings(args)
    if cluster_info(settings) is not None:
        return Runtime.start(settings, mode="cluster")
    # serve owns the home itself; doctor and policy need the kernel's own methods, which HTTP does not carry.
    served = _served(settings) if args.command not in ("serve", "doctor", "policy") else None
    if served is not None:
        return served
    uses_model = args.command in _MODEL_COMMANDS or (args.command == "ingest" and settings.llm == "local")
    if not uses_model:  # loading the model takes seconds; most commands never touch it
        settings = settings.model_copy(update={"model": None})
    # The data dir's lock names this command to whoever opens the home meanwhile (memos.storage.owner).
    return Runtime.start(settings, mode="inprocess" if mode == "local" else mode,  # type: ignore[arg-type]
                         owner=f"memos {args.command}")


def _served(settings: Settings) -> Any:
    """A runtime over HTTP to the `memos serve` that owns ``settings.home`` (it records its URL in the data dir's
    lock, memos.storage.owner), acting with $MEMOS_API_KEY ($MEMOS_CA_FILE for a private CA); None without a key or
    a serving owner."""
    import os

    from memos.storage.owner import read_owner

    owner, key = read_owner(settings.home), os.environ.get("MEMOS_API_KEY")
    if not owner or not owner.get("endpoint") or not key:
        return None
    from memos.runtime import Runtime
    from memos.transports_http import HttpTransport

    transport = HttpTransport(owner["endpoint"], key, ca_file=os.environ.get("MEMOS_CA_FILE") or None)
    return Runtime(settings, transport, mode="http")


def _client(runtime: Any, principal: str) -> Any:
    """The client a command acts through: over HTTP the key decides who acts, unless ``--as`` named someone (then
    the server checks that the key is theirs)."""
    from memos.client import Memos

    if getattr(runtime, "mode", None) == "http" and principal == DEFAULT_PRINCIPAL:
        return Memos(runtime.transport)
    return runtime.client(principal)


_MODEL_COMMANDS = frozenset({"migrate", "distill", "context", "generate", "serve"})  # serve exposes them all


# ------------------------------------------------------------------------------------------------------ cluster


def cmd_up(args: argparse.Namespace) -> int:
    from memos.hosting.ray_host import cluster_info, up

    settings = _settings(args)
    if cluster_info(settings) is not None:
        print(f"a memos cluster is already recorded in {settings.cluster_file}; 'memos status' or 'memos down'")
        return 1
    info = up(settings)
    print(f"memos is up. kernel actor '{info['kernel_actor']}' in namespace '{info['namespace']}'")
    print(f"Ray dashboard: {info['dashboard_url']}")
    print(f"Metrics (Prometheus text): {info['metrics_url']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from memos.errors import BackendError
    from memos.hosting.ray_host import RayTransport, cluster_info, connect, health_advice, kernel_health

    settings = _settings(args)
    info = cluster_info(settings)
    if info is None:
        print("memos is not running (no cluster recorded); start it with 'memos up'")
        return 1
    try:
        host = connect(settings)
    except BackendError as exc:
        print(f"memos cluster recorded but not answering: {exc}. Fix: 'memos down' then 'memos up'")
        return 1
    try:
        health = kernel_health(settings)
    except BackendError as exc:
        health = {"state": "UNKNOWN", "restarts": 0, "pid": None, "death_cause": str(exc)}
    try:  # a short ping: status reports, it does not wait out a restart
        ping = RayTransport(host.actors["kernel"], retry_for_s=0, timeout_s=10).ping()
    except BackendError as exc:
        print(f"memos cluster recorded but the kernel is not answering: {health_advice(health)} ({exc})")
        return 1
    from memos.client import Memos

    stats = Memos(host.transport, "system").stats()
    print(f"memos is running: kernel pid {ping['pid']}, pending index ops {ping['pending_index']}")
    print(health_advice(health))
    print(f"Ray dashboard: {info.get('dashboard_url')}")
    print(f"Metrics: {info.get('metrics_url')}")
    _print(stats)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from memos.hosting.ray_host import down

    if down(_settings(args)):
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
    with Runtime.start(_settings(args), mode=args.mode, dashboard=not args.no_dashboard) as runtime:
        print(f"memos runtime: {runtime.mode}; data dir {runtime.settings.home}")
        if runtime.dashboard_url:
            print(f"Ray dashboard: {runtime.dashboard_url}")
        summary = module.run(runtime)
        if args.json or not hasattr(module, "report"):
            _print(summary)
        else:
            from rich.console import Console

            console = Console()
            if not console.is_terminal:  # a file or a pipe: wide enough for the report's tables
                console = Console(width=120)
            console.print(module.report(summary))
    return 0


# ------------------------------------------------------------------------------------------------------ syscalls


def cmd_syscall(args: argparse.Namespace) -> int:
    with _open(args) as runtime:
        mem = _client(runtime, args.principal)
        if args.command == "cubes":
            _print(mem.cubes())
        elif args.command == "write":
            _print(mem.write(args.cube, args.content, tags=args.tag or ()))
        elif args.command == "read":
            _print(mem.read(args.id, args.version))
        elif args.command == "search":
            _print(mem.search(args.query, args.cube, k=args.k))
        elif args.command == "history":
            _print(mem.history(args.id))
        elif args.command == "ingest":
            return _ingest(mem, args)
        elif args.command == "stats":
            _print(mem.stats())
        elif args.command == "audit":
            _print(mem.audit(args.cube, limit=args.limit))
        elif args.command == "events":
            return _events(mem, args)
        elif args.command == "migrate":
            return _follow(mem, lambda: mem.migrate(args.ids, args.to), "migrate", args.ids, quiet=args.quiet)
        elif args.command == "distill":
            return _follow(
                mem, lambda: mem.distill(args.ids, args.cube, tags=args.tag or (), allow_untrusted=args.allow_untrusted,
                                         steps=args.steps, replaces=args.replaces),
                "distill", args.ids, target=args.replaces, quiet=args.quiet,
            )
        elif args.command == "jobs":
            jobs = mem.jobs(running_only=args.running)
            if args.json:
                _print(jobs)
            else:
                from memos.cli_tables import jobs_table, show

                show(jobs_table(jobs), empty="no jobs you may see (running or recently ended)")
        elif args.command == "cancel":
            _print(mem.cancel(args.job_id))
        elif args.command == "context":
            _print(mem.assemble_context(args.query, args.cube, token_budget=args.budget))
        elif args.command == "generate":
            _print(mem.generate(args.prompt, cubes=args.cube or (), memory=args.memory or (),
                                max_new_tokens=args.max_new_tokens))
    return 0


def cmd_cube(args: argparse.Namespace) -> int:
    with _open(args) as runtime:
        mem = _client(runtime, args.principal)
        if args.cube_command == "create":
            _print(mem.create_cube(args.cube, args.description, exist_ok=args.exist_ok))
        elif args.cube_command == "grant":
            _print(mem.grant(args.cube, args.grantee, args.right))
        else:
            _print(mem.revoke(args.cube, args.grantee))
    return 0


def _ingest(mem: Any, args: argparse.Namespace) -> int:
    """``memos ingest CUBE --file conversation.json``: one line per decision (action, memory, text, why, refs)."""
    try:
        data = json.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidSyscall(f"{args.file}: cannot read a JSON conversation: {exc}") from exc
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise InvalidSyscall(f"{args.file}: expected a list of messages or {{\"messages\": [...]}}")
    if not args.dry_run:
        mem.create_cube(args.cube, exist_ok=True)  # a conversation's first ingest makes its cube
    result = mem.ingest(args.cube, messages, dry_run=args.dry_run)
    if args.json:
        _print(result)
        return 0
    for d in result.decisions:
        where = f"{d.memory.id} v{d.memory.version}" if d.memory else (f"({d.target.id} v{d.target.version})" if d.target else "-")
        print(f"{d.action.upper():<10} {where:<28} {d.text}")
        print(f"{'':<10} why: {d.reason}; from {', '.join(d.source_refs) or 'no message'}")
    counts = ", ".join(f"{n} {a}" for a, n in result.counts().items())
    print(f"{len(result.decisions)} facts by {result.extractor}: {counts}" + (" (dry run: nothing written)" if result.dry_run else ""))
    return 0


def _follow(mem: Any, run: Any, op: str, ids: list[str], *, target: str | None = None, quiet: bool = False) -> int:
    """Run a long syscall in a thread and draw its job's progress on stderr until it returns; print its result.

    Ctrl-C cancels the job (``cancel``): the syscall then fails with ``Cancelled`` and nothing is committed."""
    import threading

    from memos.progress import Progress

    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["result"] = run()
        except BaseException as exc:  # handed to the main thread, which reports it like any syscall error
            out["error"] = exc

    thread = threading.Thread(target=work, name=f"memos-{op}", daemon=True)
    started = time.time()
    thread.start()
    bar: Progress | None = None
    job_id: str | None = None
    try:
        while thread.is_alive():
            thread.join(0.5)
            if quiet or not thread.is_alive():
                continue
            job = _our_job(mem, op, ids, target, started, job_id)
            if job is None:
                continue
            job_id = job.id
            if bar is None:
                bar = Progress(f"{op} {job.target or ''}".strip(), total=job.total or None)
            note = f"loss {job.loss:.3f}" if job.loss is not None else ""
            bar.update(job.step, job.total or None, note=note, label=f"{op} {job.phase}".strip())
    except KeyboardInterrupt:
        if job_id is not None:
            mem.cancel(job_id)
            print(f"\ncancelling {job_id} ...", file=sys.stderr, flush=True)
        thread.join()
    if bar is not None:
        bar.close("cancelled" if isinstance(out.get("error"), MemosError) and out["error"].code == "cancelled" else "")
    if "error" in out:
        raise out["error"]
    _print(out["result"])
    return 0


def _our_job(mem: Any, op: str, ids: list[str], target: str | None, started: float, known: str | None) -> Any:
    """The job this command started: ours by id once known, else the newest running one of ``op`` by this principal
    over exactly ``ids`` (or retraining ``target``) started since the command began."""
    for job in reversed(mem.jobs()):
        if known is not None:
            if job.id == known:
                return job
            continue
        if (job.op == op and job.principal == mem.principal and job.state == "running"
                and job.started_at.timestamp() >= started - 1
                and (set(job.memory_ids) == set(ids) if ids else job.target == target)):
            return job
    return None


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
    with _open(args) as runtime:
        mem = _client(runtime, args.principal)
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
        data = e.data
        rule = f" rule={data['rule']}" if data.get("rule") else ""
        what = f"{data.get('frm', '')}->{data.get('to', '')}" if e.type == "migrated" else data.get("reason", "")
        lines.append(f"  {e.at:%H:%M:%S} {e.type:<10} {e.memory_id} {what}{rule}")
    if not recent:
        lines.append("  (none yet)")
    lines += ["", "recent policy runs:", *_policy_run_lines(runs)]
    lines += ["", "jobs (long operations):", *_job_lines(jobs or [])]
    return "\n".join(lines) + "\n"


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
        data = e.data
        if e.type == "policy_fired":
            counts = f"planned {data.get('planned', 0)}, ok {data.get('ok', 0)}, failed {data.get('failed', 0)}"
            if data.get("not_executed"):
                counts += f", not executed {data['not_executed']}"
            rules = ", ".join(f"{rule} x{n}" for rule, n in sorted((data.get("rules") or {}).items()))
            lines.append(f"  {e.at:%H:%M:%S} {data.get('policy', '?'):<16} {counts}  {data.get('duration_ms', 0):.0f} ms"
                         + (f"  [{rules}]" if rules else ""))
        else:
            lines.append(f"  {e.at:%H:%M:%S}   failed {data.get('op', '?')} {e.memory_id or ''} rule={data.get('rule')}"
                         f" [{data.get('code')}] {data.get('message', '')}"[:160])
    return lines or ["  (none yet)"]


def cmd_policy(args: argparse.Namespace) -> int:
    from memos.schedulers.commands import main_check, main_explain
    from memos.schedulers.snapshot import KernelSnapshot
    from memos.syscalls import Snapshot

    if args.policy_command == "check":
        return main_check(args.files)
    if args.policy_command == "run":
        with _open(args) as runtime:
            reports = runtime.run_policy(args.name)
        if not reports:
            print("no policies are loaded (Settings.policies / MEMOS_POLICIES)", file=sys.stderr)
            return 1
        if args.json:
            _print(reports)
        else:
            from memos.cli_tables import policy_runs_table, show

            show(policy_runs_table(reports))
        return 0
    # explain: a dry run on the kernel's current state (read through the snapshot syscall, as the scheduler does)
    with _open(args) as runtime:
        state = runtime.client("system").execute(Snapshot(read_window_s=400 * 86400))
    snapshot = KernelSnapshot(memories=state.memories, read_times=state.read_times, loaded_adapters=state.loaded_adapters)
    now = state.at.timestamp() + (_duration(args.after) if args.after else 0.0)
    return main_explain(args.files, snapshot, now)


def _duration(text: str) -> float:
    from memos.schedulers.units import parse_duration

    return parse_duration(text)


def cmd_doctor(args: argparse.Namespace) -> int:
    """SQLite's integrity check and the index outbox; with --repair, the index rebuild, its progress on stderr (a
    live bar in-process; a start and a done line when the kernel runs in the cluster, which cannot call back)."""
    from memos.progress import Progress, format_duration

    phases = {"add": "index: embedding missing entries", "check": "index: checking metadata"}
    with _open(args) as runtime:
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
    _print(report)
    return 0 if report["sqlite_integrity"] == "ok" else 1


# ------------------------------------------------------------------------------------------------------ service


def _keys_path(args: argparse.Namespace) -> Path:
    return Path(args.keys).expanduser() if args.keys else _settings(args).home / "keys.yaml"


def cmd_serve(args: argparse.Namespace) -> int:
    from memos.server.http import check_binding, serve
    from memos.server.keys import KeyFile

    try:
        check_binding(args.host, tls_cert=args.tls_cert, tls_key=args.tls_key, allow_insecure=args.insecure)
        keys = KeyFile(_keys_path(args))
        with _open(args) as runtime:
            lock = getattr(getattr(getattr(runtime.transport, "service", None), "kernel", None), "home_lock", None)
            if lock is not None:  # this process owns the home: say where it answers, for the next opener's error
                local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104 (a wildcard bind)
                lock.set_endpoint(f"{'https' if args.tls_cert else 'http'}://{local}:{args.port}")
            serve(
                runtime.transport, keys, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                allow_insecure=args.insecure, max_body_bytes=args.max_body, mcp=args.mcp, mcp_default_cube=args.cube,
            )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    import os

    from memos.server.keys import load_keys
    from memos.server.mcp import run_stdio, stdio_principal

    try:
        principal = stdio_principal(load_keys(_keys_path(args)), os.environ.get("MEMOS_API_KEY"))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with _open(args) as runtime:
        run_stdio(runtime.transport, principal, default_cube=args.cube)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from memos.server.keys import add_key, hash_key, revoke_keys, superuser_warning

    path = _keys_path(args)
    try:
        if args.keys_command == "add":
            warning = superuser_warning(args.principal, _settings(args).superusers)
            if warning:
                print(warning, file=sys.stderr)
            key = add_key(path, args.principal)
            print(key)
            print(f"a key for {args.principal}, shown once; {path} keeps only its sha256 {hash_key(key)}", file=sys.stderr)
        else:
            print(f"revoked {revoke_keys(path, args.principal)} key(s) of {args.principal} in {path}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------------------ bench


def cmd_bench_load(args: argparse.Namespace) -> int:
    from memos.bench.load import run_load_bench

    result = run_load_bench(
        args.out, clients=tuple(int(c) for c in args.clients.split(",")), seconds=args.seconds, cubes=args.cubes,
        seed=args.seed, home=args.bench_home,
    )
    check = result["verification"]
    return 1 if check["acknowledged_writes_lost"] or check["acknowledged_updates_lost"] else 0


def cmd_bench_soak(args: argparse.Namespace) -> int:
    if args.kill_actor:  # Ray restarts the kernel actor; clients resend: nothing lost, nothing twice
        from memos.bench.actor_soak import run_actor_soak

        low, high = (float(x) for x in (args.kill_after or "2,4").split(","))
        report = run_actor_soak(args.cycles, writers=args.writers, kill_every_s=(low, high), home=args.bench_home,
                                out_dir=args.out, seed=args.seed,
                                embedder="hashing" if args.embedder == "hashing" else "all-MiniLM-L6-v2")
        return 1 if report["acknowledged_writes_lost"] or report["duplicated"] else 0
    from memos.bench.soak import run_crash_soak

    low, high = (float(x) for x in (args.kill_after or "0.05,1.5").split(","))
    result = run_crash_soak(
        args.cycles, home=args.bench_home, out_dir=args.out, seed=args.seed, kill_after_s=(low, high),
        embedder=args.embedder, dense_sample=args.dense_sample,
    )
    totals = result["totals"]
    bad = result["acknowledged_changes_lost"] or any(
        totals.get(k) for k in ("purged_left", "half_versions", "index_missing", "index_extra", "index_outdated",
                                "integrity_failures")
    )
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memos", description="memos: a memory operating system for LLM agents")
    parser.add_argument("--home", help="data dir (default: $MEMOS_HOME or ~/.memos)")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("up", help="start a local Ray head, the dashboard and the kernel actor").set_defaults(fn=cmd_up)
    sub.add_parser("status", help="is memos running? where is the dashboard?").set_defaults(fn=cmd_status)
    sub.add_parser("down", help="stop what 'memos up' started").set_defaults(fn=cmd_down)

    p = sub.add_parser("run", help="run a workflow file (a module with run(runtime))")
    p.add_argument("file")
    p.add_argument("--mode", default="auto", choices=["auto", "ray", "cluster", "inprocess"])
    p.add_argument("--no-dashboard", action="store_true", help="start the embedded Ray without its dashboard")
    p.add_argument("--json", action="store_true", help="print the run's summary as JSON (default: its report)")
    p.set_defaults(fn=cmd_run)

    def syscall_parser(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--as", dest="principal", default=DEFAULT_PRINCIPAL,
                        help=f"principal to act as (default {DEFAULT_PRINCIPAL})")
        sp.set_defaults(fn=cmd_syscall)
        return sp

    syscall_parser("cubes", "list the cubes you may read")
    cube = sub.add_parser("cube", help="create a cube, grant or revoke a right on it")
    cube_sub = cube.add_subparsers(dest="cube_command", required=True)
    for name, help_ in [("create", "create a cube (you become its admin)"),
                        ("grant", "give a principal a right on a cube (admin)"),
                        ("revoke", "take every right of a principal on a cube (admin)")]:
        p = cube_sub.add_parser(name, help=help_)
        p.add_argument("--as", dest="principal", default=DEFAULT_PRINCIPAL,
                       help=f"principal to act as (default {DEFAULT_PRINCIPAL})")
        p.add_argument("cube")
        if name == "create":
            p.add_argument("--description", default="")
            p.add_argument("--exist-ok", action="store_true", help="no error when the cube exists")
        else:
            p.add_argument("grantee", metavar="principal")
        if name == "grant":
            p.add_argument("right", choices=["read", "write", "admin"])
        p.set_defaults(fn=cmd_cube)
    p = syscall_parser("write", "write a memory")
    p.add_argument("cube")
    p.add_argument("content")
    p.add_argument("--tag", action="append")
    p = syscall_parser("read", "read a memory")
    p.add_argument("id")
    p.add_argument("--version", type=int)
    p = syscall_parser("search", "hybrid search in a cube")
    p.add_argument("cube")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
    p = syscall_parser("ingest", "extract memories from a conversation file into a cube (made if missing); "
                              "show each decision and why")
    p.add_argument("cube")
    p.add_argument("--file", required=True, type=Path,
                   help="JSON: a list of messages {content, speaker?, id?, at?, session?} or {\"messages\": [...]}")
    p.add_argument("--dry-run", action="store_true", help="decide and show, write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = syscall_parser("history", "every version of a memory with provenance")
    p.add_argument("id")
    syscall_parser("stats", "memories by kind and state")
    p = syscall_parser("audit", "the audit log of a cube (admin)")
    p.add_argument("cube", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p = syscall_parser("events", "kernel events as JSON lines")
    p.add_argument("--since", type=int, default=0)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--type", dest="types", action="append", default=[], metavar="TYPE",
                   help="only events of this type (repeatable): written, migrated, policy_fired, job_failed, ...")
    p.add_argument("--tail", type=int, metavar="N", help="start with the newest N events, as tail -f does")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events (Ctrl-C to stop)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls with --follow")

    p = syscall_parser("top", "a refreshing summary: memories, bytes, syscall rate and latency, migrations")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(fn=cmd_top)

    policy = sub.add_parser("policy", help="lifecycle policies: check, explain (dry run), run now")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    p = policy_sub.add_parser("check", help="validate policy files (exit 1 on any problem, with file:line key)")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("explain", help="what the policies would do now on the kernel's data, and why")
    p.add_argument("files", nargs="+")
    p.add_argument("--after", help="evaluate as if this much time had passed, e.g. 30d")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("run", help="evaluate the kernel's loaded policies now and execute their actions")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true", help="the run reports as JSON (times as epoch seconds)")
    p.set_defaults(fn=cmd_policy)

    p = syscall_parser("migrate", "move memories to another kind (activation builds their KV cache)")
    p.add_argument("ids", nargs="+")
    p.add_argument("--to", required=True, choices=["plaintext", "activation"])
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    p = syscall_parser("distill", "train a LoRA adapter on memories into a parametric memory (progress; Ctrl-C cancels)")
    p.add_argument("ids", nargs="*", help="the memories to distill (none with --replaces: its sources)")
    p.add_argument("--cube", help="where the new parametric memory goes")
    p.add_argument("--replaces", help="retrain this parametric memory from its sources' current versions")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the recipe's epochs)")
    p.add_argument("--tag", action="append")
    p.add_argument("--allow-untrusted", action="store_true", help="also distill untrusted (tool/document) memories")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    p = syscall_parser("jobs", "long operations (distillations, migrations) running or recently ended")
    p.add_argument("--running", action="store_true", help="only the running ones")
    p.add_argument("--json", action="store_true", help="the jobs as JSON (default: a table)")
    p = syscall_parser("cancel", "stop a running job (it commits nothing)")
    p.add_argument("job_id")
    p = syscall_parser("context", "which memories a query would get within a token budget, and why")
    p.add_argument("cube")
    p.add_argument("query")
    p.add_argument("--budget", type=int, default=512)
    p = syscall_parser("generate", "run the model with memory injected")
    p.add_argument("prompt")
    p.add_argument("--cube", action="append", help="choose memory from this cube (repeatable)")
    p.add_argument("--memory", action="append", help="inject exactly this memory id (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)

    p = sub.add_parser("doctor", help="check SQLite and the vector index")
    p.add_argument("--repair", action="store_true", help="rebuild missing index entries from SQLite")
    p.set_defaults(fn=cmd_doctor)

    p = sub.add_parser("serve", help="the HTTP API (and MCP at /mcp with --mcp), for the principals of API keys")
    p.add_argument("--keys", help="keys file, sha256(key) -> principal (default: <home>/keys.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tls-cert", help="PEM certificate (chain) for HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without TLS (TLS proxy in front)")
    p.add_argument("--max-body", type=int, default=1024 * 1024, help="largest request body in bytes (default 1 MiB)")
    p.add_argument("--mcp", action="store_true", help="also serve MCP (streamable HTTP) at /mcp")
    p.add_argument("--cube", help="the MCP tools' default cube")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("mcp", help="an MCP server on stdin/stdout, acting as the principal of $MEMOS_API_KEY")
    p.add_argument("--keys", help="keys file (default: <home>/keys.yaml)")
    p.add_argument("--cube", help="the tools' default cube")
    p.set_defaults(fn=cmd_mcp)

    keys = sub.add_parser("keys", help="API keys for 'memos serve' and 'memos mcp'")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name, help_ in [("add", "make a key for a principal and print it (once)"),
                        ("revoke", "remove every key of a principal (a running server stops accepting them)")]:
        p = keys_sub.add_parser(name, help=help_)
        p.add_argument("principal")
        p.add_argument("--keys", help="keys file (default: <home>/keys.yaml)")
        p.set_defaults(fn=cmd_keys)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("retrieval", help="LoCoMo recall@k: memos hybrid vs a dense baseline")
    from memos.bench import retrieval as retrieval_bench

    retrieval_bench.add_arguments(p)
    p.set_defaults(fn=retrieval_bench.main)
    p = bench.add_parser("load", help="N concurrent clients through the Ray kernel; checks no acknowledged write is lost")
    p.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per client count")
    p.add_argument("--cubes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", dest="bench_home", help="data dir (default: a temporary one)")
    p.add_argument("--out", default="bench-results/load")
    p.set_defaults(fn=cmd_bench_load)
    p = bench.add_parser("soak", help="SIGKILL the kernel at random points, restart, verify everything acknowledged")
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kill-after", help="min,max seconds before each kill (default 0.05,1.5; with --kill-actor 2,4)")
    p.add_argument("--embedder", default="hashing", choices=["hashing", "minilm"])
    p.add_argument("--dense-sample", type=int, default=25)
    p.add_argument("--kill-actor", action="store_true",
                   help="instead: SIGKILL the kernel actor on a local Ray --cycles times under concurrent writers; Ray "
                        "restarts it; reports lost, duplicated and unreachable seconds")
    p.add_argument("--writers", type=int, default=4, help="concurrent writers with --kill-actor")
    p.add_argument("--home", dest="bench_home", help="data dir (default: a temporary one)")
    p.add_argument("--out", default="bench-results/soak")
    p.set_defaults(fn=cmd_bench_soak)
    p = bench.add_parser("activation", help="time to first token: cold prefill vs injected KV cache, 256-2048 tokens")
    from memos.bench import activation as activation_bench

    activation_bench.add_arguments(p)
    p.set_defaults(fn=activation_bench.main)
    p = bench.add_parser("extraction", help="LoCoMo through ingest vs one memory per turn: memories, recall, latency")
    from memos.bench import extraction as extraction_bench

    extraction_bench.add_arguments(p)
    p.set_defaults(fn=extraction_bench.main)
    p = bench.add_parser("parametric", help="distil 20/50/100 invented facts: time, bytes, recall with/without, locality")
    from memos.bench import parametric as parametric_bench

    parametric_bench.add_arguments(p)
    p.set_defaults(fn=parametric_bench.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except MemosError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        hint = _hint(exc, getattr(args, "principal", None))
        if hint:
            print(f"hint: {hint}", file=sys.stderr)
        return 2


def _hint(exc: MemosError, principal: str | None) -> str | None:
    """What to try when the default principal is refused: it is an ordinary principal with no rights of its own."""
    if principal != DEFAULT_PRINCIPAL or exc.code not in ("not_found", "denied"):
        return None
    return (f"commands act as {DEFAULT_PRINCIPAL}, which sees only the cubes it created or was granted; act as another "
            f"principal with --as (e.g. --as system, the superuser), or have the cube's admin run "
            f"'memos cube grant CUBE {DEFAULT_PRINCIPAL} read'")


if __name__ == "__main__":
    raise SystemExit(main())
