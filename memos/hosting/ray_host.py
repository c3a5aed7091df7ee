"""The kernel as a named Ray actor, and the transport that reaches it.

``KernelActor`` is a plain class; ``ray.remote`` is applied in one place (``_remote_class``). Three ways in:
``start_embedded`` (a private local Ray with the dashboard, for the main job and tests), ``up``/``down`` (a local
Ray head started with ``ray start`` and a detached kernel actor, for ``memos up``) and ``connect`` (attach to what
``memos up`` started, from another process). Ray binds 127.0.0.1 only: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set
before Ray starts unless the user set it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos.config import Settings
from memos.errors import BackendError, DataDirInUse, MemosError, ModelUnavailable
from memos.service import shard_settings
from memos.storage.owner import read_owner
from memos.storage.placement import Placement, shard_home
from memos.transports.ray import RETRY_FOR_S, RayTransport
from memos.transports.router import ShardRouter

__all__ = ["RETRY_FOR_S", "KernelActor", "RayHost", "RayTransport", "cluster_info", "connect", "start_embedded", "up"]

GAUGE_PERIOD_S = 5.0
SHARD_ADMIN = ("export_cube", "import_cube", "drop_moved_cube", "discard_copy")


def loopback_env() -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class KernelActor:
    """The kernel process: owns the SQLite file and the Chroma path of ``settings.home``. It holds a
    ``KernelService`` (built by ``memos.service.open_service``, as every other host of a kernel) and answers for it."""

    def __init__(self, settings: dict[str, Any], model_actor: Any = None, owner: str = "a Ray kernel actor") -> None:
        # Ray pins OMP threads to the actor's num_cpus; the embedder should use the machine (torch is imported later).
        os.environ["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
        from memos.hosting.model_actor import RayModelPort
        from memos.logging import configure_logging
        from memos.service import open_service

        cfg = Settings.model_validate(settings)
        log_dir = cfg.home / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        configure_logging(stream=open(log_dir / "kernel.jsonl", "a", buffering=1))  # noqa: SIM115 (lives with the actor)
        model = RayModelPort(model_actor) if model_actor is not None else None
        self.service = open_service(cfg, model=model, owner=owner, lock_wait_s=KERNEL_LOCK_WAIT_S)
        # Ray restarted this actor after its process died: the policies applied meanwhile come back (paused rules
        # always do, memos.service); a fresh start (memos up) loads MEMOS_POLICIES only.
        import ray

        if ray.get_runtime_context().was_current_actor_reconstructed:
            self.service.restore_applied()
        else:
            self.service.forget_applied()
        self.kernel, self.policies = self.service.kernel, self.service.policies
        from memos.hosting.metrics import RayMetricsObserver

        self.metrics = RayMetricsObserver()
        self.kernel.observers.append(self.metrics)
        self._stop = threading.Event()
        threading.Thread(target=self._refresh_gauges, name="memos-gauges", daemon=True).start()

    # What the Ray transport (memos.transports.ray) calls; each answers for the service.

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        return self.service.call(principal, syscall, trace_id)

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self.service.call_batch(principal, syscalls)

    def ping(self) -> dict[str, Any]:
        return self.service.ping()

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        return self.service.doctor(repair)

    def shard_admin(self, method: str, *args: Any) -> dict[str, Any]:
        """A cube move's step (``KernelService.export_cube`` ...), as an envelope."""
        if method not in SHARD_ADMIN:
            return {"error": MemosError(f"unknown shard method {method!r}").to_wire()}
        return getattr(self.service, method)(*args)

    def run_policy(self, name: str | None = None) -> list[dict[str, Any]]:
        return self.service.run_policy(name)

    def run_policy_envelope(self, name: str | None) -> dict[str, Any]:
        try:
            return {"ok": self.service.run_policy(name)}
        except MemosError as exc:
            return {"error": exc.to_wire()}

    def policy_admin_envelope(self, command: str, arg: str | None) -> dict[str, Any]:
        try:
            return {"ok": self.service.policy_admin(command, arg)}
        except MemosError as exc:
            return {"error": exc.to_wire()}

    def _refresh_gauges(self) -> None:
        """Memory counts by cube/kind/state, budgets and loaded policies for the dashboard and alerts, every
        GAUGE_PERIOD_S (reads only; SQLite is locked)."""
        from memos.hosting.metrics import budget_rows, policy_rows

        while not self._stop.wait(GAUGE_PERIOD_S):
            cubes = [c.name for c in self.kernel.store.list_cubes()]
            self.metrics.refresh_gauges(self.kernel.store.counts(cubes))
            self.metrics.refresh_jobs(self.kernel.jobs.all())
            runner = self.service.policies  # made by the first "memos policy apply" when none was loaded
            loaded = list(runner.policies.values()) if runner is not None else []
            self.metrics.refresh_budgets(budget_rows(self.kernel, loaded))
            self.metrics.refresh_policies(policy_rows(loaded))

    def close(self) -> None:
        self._stop.set()
        self.service.close()


#: Ray restarts a kernel actor whose process died (kill -9, OOM, a crash) as often as it dies; each restart opens
#: the data dir again and recovers it (index outbox replay, interrupted migrations rolled back). A constructor that
#: raises (a corrupt database, a data dir owned by another process) is not restarted: the actor stays DEAD.
KERNEL_MAX_RESTARTS = -1
#: How long a (re)starting kernel actor waits for the data dir's lock: the process it replaces may still be exiting.
KERNEL_LOCK_WAIT_S = 30.0


def _remote_class() -> Any:
    import ray

    # Threaded: a long syscall (generate, migrate) releases the kernel while the model host works. Ray never resends
    # a call itself (max_task_retries=0): RayTransport resends only what is safe to resend (memos.syscalls.retry_safe).
    return ray.remote(num_cpus=0, max_restarts=KERNEL_MAX_RESTARTS, max_task_retries=0, max_concurrency=16)(KernelActor)


def shard_actor(settings: Settings, shard: int) -> str:
    return shard_settings(settings, shard).kernel_actor


def _start_actors(settings: Settings, *, detached: bool, shards: int = 0) -> dict[str, Any]:
    """The model host (if configured) and the kernel actor that uses it; with ``shards``, that many kernel shard
    actors (``kernel-0``, ``kernel-1``, ...), each owning its shard's data dir and sharing the model host."""
    from memos.hosting.model_actor import model_actor_class

    options: dict[str, Any] = {"lifetime": "detached", "get_if_exists": True} if detached else {}
    actors: dict[str, Any] = {}
    model = None
    if settings.model is not None:
        cpus = max(1, (os.cpu_count() or 1))
        model = model_actor_class(cpus).options(name=settings.model_actor, **options).remote(
            settings.model_dump(mode="json"), cpus
        )
        actors["model"] = model
    owner = "the kernel actor of memos up" if detached else "the kernel actor of an embedded Ray (Runtime.start)"
    if not shards:
        actors["kernel"] = _remote_class().options(name=settings.kernel_actor, **options).remote(
            settings.model_dump(mode="json"), model, owner
        )
        return actors
    for k in range(shards):
        cfg = shard_settings(settings, k)
        actors[f"kernel-{k}"] = _remote_class().options(name=cfg.kernel_actor, **options).remote(
            cfg.model_dump(mode="json"), model, f"{owner} (shard {k})"
        )
    return actors


def kernel_transport(settings: Settings, actors: dict[str, Any], shards: int = 0) -> RayTransport | ShardRouter:
    """The kernel actor's transport, or the router over the shard actors (``memos.transports.router``)."""
    if not shards:
        return RayTransport(actors["kernel"])
    return ShardRouter([RayTransport(actors[f"kernel-{k}"]) for k in range(shards)], Placement(settings.home))


def prepare_shards(settings: Settings, shards: int) -> None:
    """Make (or grow) the placement table of a sharded data dir.

    Raises:
        DataDirInUse: the home holds an unsharded kernel's data (it is not split up; use another data dir), or a
            shard's data dir is owned by another process.
        InvalidSyscall: ``shards`` out of range, or fewer than the table has.
    """
    if settings.db_path.exists():
        raise DataDirInUse(f"{settings.home} holds an unsharded kernel's data ({settings.db_path.name}); shards need "
                           "a data dir of their own (MEMOS_HOME=...), or start it without --shards")
    for k in range(shards):
        if (owner := read_owner(shard_home(settings.home, k))) is not None:
            raise DataDirInUse(f"shard {k} of {settings.home} is owned by {owner.get('owner')}, pid "
                               f"{owner.get('pid')}: stop it first", owner=owner.get("owner"), pid=owner.get("pid"))
    Placement.create(settings.home, shards)


@dataclass
class RayHost:
    """A Ray session this process is attached to, with the kernel actor's transport."""

    transport: RayTransport | ShardRouter
    dashboard_url: str | None
    metrics_url: str | None
    owns_ray: bool
    actors: dict[str, Any] = field(default_factory=dict)

    def shutdown(self) -> None:
        import ray

        if self.owns_ray:
            for actor in self.actors.values():
                ray.kill(actor)
            ray.shutdown()
        elif isinstance(self.transport, ShardRouter):
            self.transport.close()


def _dashboard_url(context: Any) -> str | None:
    url = getattr(context, "dashboard_url", None)
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def start_embedded(settings: Settings, *, dashboard: bool = True, num_cpus: int | None = None,
                   shards: int = 0) -> RayHost:
    """Start a private local Ray (127.0.0.1) and the kernel actor in it (with ``shards``: that many kernel shard
    actors, placed by ``<home>/shards/placement.json``, behind a ``ShardRouter``; a sharded data dir gets its table's
    count without asking)."""
    loopback_env()
    if not shards and Placement.exists(settings.home):
        shards = Placement(settings.home).shards
    if shards:
        prepare_shards(settings, shards)
    import ray

    context = ray.init(
        address="local",
        namespace=settings.ray_namespace,
        include_dashboard=dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=settings.dashboard_port,
        num_cpus=num_cpus or os.cpu_count(),
        object_store_memory=256 * 1024 * 1024,
        log_to_driver=False,
        _metrics_export_port=settings.metrics_export_port,
    )
    actors = _start_actors(settings, detached=False, shards=shards)
    transport = kernel_transport(settings, actors, shards)
    transport.ping()  # surfaces a failed start here, with the actor's error
    return RayHost(
        transport, _dashboard_url(context), f"http://127.0.0.1:{settings.metrics_export_port}/metrics", True, actors
    )


def _ray_cli() -> str:
    exe = shutil.which("ray") or str(Path(os.sys.executable).with_name("ray"))
    if not Path(exe).exists():
        raise ModelUnavailable("the 'ray' command is not installed in this environment (pip install 'ray[default]')")
    return exe


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_auth_token() -> None:
    """``ray start`` refuses token auth without a token (``ray.init`` makes one, ``ray start`` does not): make the
    local token (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN_PATH``) if there is none, as Ray's own message advises.
    An existing token is kept; the token is never printed."""
    made = subprocess.run([_ray_cli(), "get-auth-token", "--generate"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    if made.returncode != 0:
        raise BackendError(f"could not create Ray's auth token: {made.stderr.strip()[-2000:]}")


RAY_WORKER_PORTS = (10002, 19999)  # `ray start`'s default --min/--max-worker-port: refused for any other component
PORT_FLAGS = {"dashboard_port": ("dashboard", "--dashboard-port", "MEMOS_DASHBOARD_PORT"),
              "metrics_export_port": ("metrics export", "--metrics-port", "MEMOS_METRICS_PORT")}


def check_ports(settings: Settings) -> None:
    """Refuse, in memos' terms, ports ``memos up`` cannot use (before ``ray start`` fails on them in its own).

    Raises:
        BackendError: the two ports are the same, or one is taken on 127.0.0.1 (by another Ray or any program).
    """
    import socket

    if settings.dashboard_port == settings.metrics_export_port:
        raise BackendError(f"the dashboard and the metrics export cannot share port {settings.dashboard_port}: give "
                           "'memos up' a different --dashboard-port or --metrics-port")
    for name, (what, flag, env) in PORT_FLAGS.items():
        port = getattr(settings, name)
        if RAY_WORKER_PORTS[0] <= port <= RAY_WORKER_PORTS[1]:
            raise BackendError(
                f"the {what} port {port} is in the range Ray keeps for its workers ({RAY_WORKER_PORTS[0]}-"
                f"{RAY_WORKER_PORTS[1]}): choose one outside it with 'memos up {flag} N' (or {env}=N)", port=port,
                use=what,
            )
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise BackendError(
                    f"the {what} port {port} on 127.0.0.1 is taken ({exc.strerror}; another Ray dashboard or "
                    f"program holds it): choose another with 'memos up {flag} N' (or {env}=N)", port=port, use=what,
                ) from exc


def prometheus_targets_file(settings: Settings) -> Path:
    """Where ``memos up`` writes the Prometheus ``file_sd`` target of its metrics export (a stable path)."""
    return settings.home / "prometheus" / "memos-targets.json"


def write_prometheus_targets(settings: Settings) -> Path:
    """Point Prometheus at this cluster's metrics export: a ``file_sd_configs`` file under the data dir, rewritten
    (atomically) by every ``memos up``, so a scrape config naming it survives restarts and port changes."""
    path = prometheus_targets_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    targets = [{"targets": [f"127.0.0.1:{settings.metrics_export_port}"],
                "labels": {"job": "memos", "memos_home": str(settings.home)}}]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(targets, indent=2) + "\n")
    tmp.replace(path)
    return path


def up(settings: Settings, *, shards: int = 0, address: str | None = None) -> dict[str, Any]:
    """``memos up``: a local Ray head with the dashboard and a detached kernel actor (with ``shards``: that many
    kernel shard actors and their placement table). With ``address``, no head is started: the actors join the
    existing Ray cluster at that address (``memos down`` then stops the actors, never that cluster). Returns the
    cluster info.

    Raises:
        DataDirInUse: another process owns the data dir (or a shard's). BackendError: a port is taken (see
            ``check_ports``), or Ray does not start or cannot be joined.
    """
    loopback_env()
    if address is None:
        check_ports(settings)
    if (owner := read_owner(settings.home)) is not None:  # the kernel actor could never take the data dir
        raise DataDirInUse(f"the data dir {settings.home} is owned by {owner.get('owner')}, pid {owner.get('pid')}: "
                           "stop it before 'memos up'", **{k: owner.get(k) for k in ("owner", "pid", "endpoint")})
    if shards:
        prepare_shards(settings, shards)
    # `ray start` enables token auth unless RAY_AUTH_MODE says otherwise; this driver must send the token too, and
    # Ray reads the mode when it is imported. A cluster joined with --address must run with the same mode, and this
    # machine must hold its token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token: docs/operations.md).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if address is not None:
        return _join(settings, address, shards)
    if os.environ["RAY_AUTH_MODE"].lower() == "token":
        _ensure_auth_token()
    # A free GCS port, not Ray's default 6379, which another Ray on this machine (e.g. an embedded one) may hold.
    gcs_address = f"127.0.0.1:{_free_port()}"
    began = time.time()
    cmd = [
        _ray_cli(), "start", "--head", f"--port={gcs_address.rpartition(':')[2]}", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={settings.dashboard_port}", f"--metrics-export-port={settings.metrics_export_port}",
        "--include-dashboard=true", "--disable-usage-stats",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
    if proc.returncode != 0:
        # A head that failed half-way (e.g. a port taken) leaves its GCS and dashboard running: stop them. Ray names
        # the session after the pid of the process that made it.
        for partial in Path(tempfile.gettempdir(), "ray").glob(f"session_*_{proc.pid}"):
            stop_processes(session_processes(str(partial), gcs_address, since=began))
        raise BackendError(f"ray start failed: {stderr.strip()[-2000:]}")
    import ray

    # The session `ray start` just made, and the processes it started, recorded now: `memos down` stops those (and
    # what they started since, e.g. workers), and only those. Stopped again if anything below fails.
    made = sorted(Path(tempfile.gettempdir(), "ray").glob(f"session_*_{proc.pid}"))
    session_dir = str(made[-1] if made else Path(tempfile.gettempdir(), "ray", "session_latest").resolve())
    processes = session_processes(session_dir, gcs_address, since=began)
    try:
        context = ray.init(address="auto", namespace=settings.ray_namespace, log_to_driver=False)
        actors = _start_actors(settings, detached=True, shards=shards)
        kernel_transport(settings, actors, shards).ping()
        info = {
            "address": context.address_info.get("address") or context.address_info.get("gcs_address"),
            "session_dir": context.address_info.get("session_dir"),
            "dashboard_url": _dashboard_url(context),
            "metrics_url": f"http://127.0.0.1:{settings.metrics_export_port}/metrics",
            "namespace": settings.ray_namespace,
            "kernel_actor": settings.kernel_actor,
            "shards": shards,
            "shard_actors": [shard_actor(settings, k) for k in range(shards)],
            "model_actor": settings.model_actor if settings.model is not None else None,
            # `ray start` turns token auth on by default; clients of an existing cluster must be told to send the token.
            "auth_mode": os.environ.get("RAY_AUTH_MODE", "token"),
            "started_at": time.time(),
            "processes": processes,
        }
    except Exception:
        ray.shutdown()
        stop_processes(processes)
        raise
    settings.cluster_file.parent.mkdir(parents=True, exist_ok=True)
    info["prometheus_targets"] = str(write_prometheus_targets(settings))
    settings.cluster_file.write_text(json.dumps(info, indent=2))
    ray.shutdown()
    return info


def _join(settings: Settings, address: str, shards: int) -> dict[str, Any]:
    """``memos up --address``: the detached actors in the Ray cluster at ``address``; no process of ours to stop."""
    import ray

    try:
        context = ray.init(address=address, namespace=settings.ray_namespace, log_to_driver=False)
    except Exception as exc:  # ray raises ConnectionError, ValueError, RuntimeError here
        raise BackendError(f"cannot join the Ray cluster at {address}: {exc} (with token auth, this machine needs "
                           "the cluster's token: docs/operations.md)", address=address) from exc
    names = [shard_actor(settings, k) for k in range(shards)] if shards else [settings.kernel_actor]
    for name in names:  # detached actors are found by name: never adopt another memos' kernel in that cluster
        with contextlib.suppress(ValueError):
            ray.get_actor(name, namespace=settings.ray_namespace)
            ray.shutdown()
            raise BackendError(f"the Ray cluster at {address} already runs an actor named {name!r} in namespace "
                               f"{settings.ray_namespace!r} (another memos data dir?): stop it, or give this one "
                               "another kernel_actor or ray_namespace in its Settings", actor=name)
    actors: dict[str, Any] = {}
    try:
        actors = _start_actors(settings, detached=True, shards=shards)
        kernel_transport(settings, actors, shards).ping()
    except Exception:
        for actor in actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)
        ray.shutdown()
        raise
    info = {
        "address": address, "session_dir": context.address_info.get("session_dir"),
        "dashboard_url": _dashboard_url(context), "metrics_url": None, "namespace": settings.ray_namespace,
        "kernel_actor": settings.kernel_actor, "shards": shards,
        "shard_actors": [shard_actor(settings, k) for k in range(shards)],
        "model_actor": settings.model_actor if settings.model is not None else None,
        "auth_mode": os.environ.get("RAY_AUTH_MODE", "token"), "started_at": time.time(), "joined": True,
        "processes": [],  # the cluster is not ours: 'memos down' stops our actors only
    }
    settings.cluster_file.parent.mkdir(parents=True, exist_ok=True)
    settings.cluster_file.write_text(json.dumps(info, indent=2))
    ray.shutdown()
    return info


def cluster_info(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(settings.cluster_file.read_text())
    except (OSError, ValueError):
        return None


def connect(settings: Settings) -> RayHost:
    """Attach to the cluster ``memos up`` started. Raises BackendError if it is not running."""
    info = cluster_info(settings)
    if info is None:
        raise BackendError(f"no memos cluster recorded in {settings.cluster_file}; run 'memos up'")
    loopback_env()
    os.environ.setdefault("RAY_AUTH_MODE", info.get("auth_mode", "token"))
    import ray

    try:
        ray.init(address=info["address"], namespace=info["namespace"], log_to_driver=False)
        shards = int(info.get("shards") or 0)
        actors = {f"kernel-{k}": ray.get_actor(name, namespace=info["namespace"])
                  for k, name in enumerate(info.get("shard_actors") or ())}
        if not shards:
            actors["kernel"] = ray.get_actor(info["kernel_actor"], namespace=info["namespace"])
        if info.get("model_actor"):
            actors["model"] = ray.get_actor(info["model_actor"], namespace=info["namespace"])
    except Exception as exc:  # ray raises ConnectionError, ValueError, RuntimeError here
        ray.shutdown()
        raise BackendError(f"memos cluster at {info.get('address')} is not reachable: {exc}") from exc
    return RayHost(kernel_transport(settings, actors, shards), info.get("dashboard_url"), info.get("metrics_url"),
                   False, actors)


def kernel_health(settings: Settings, name: str | None = None) -> dict[str, Any] | None:
    """What Ray says of the kernel actor of ``memos up`` (call while connected): ``state`` (ALIVE, RESTARTING,
    DEAD, ...), ``restarts``, ``pid``, ``death_cause``; None when Ray knows no such actor. The newest actor of that
    name wins (earlier ``memos up`` sessions leave DEAD ones behind only in their own, stopped, cluster).

    Raises:
        BackendError: Ray's state API did not answer.
    """
    from ray.util.state import list_actors

    try:
        rows = list_actors(filters=[("name", "=", name or settings.kernel_actor)], detail=True, timeout=10,
                           raise_on_missing_output=False)
    except Exception as exc:  # the state API raises RayStateApiException, ConnectionError, ...
        raise BackendError(f"Ray's state API did not answer: {exc}") from exc
    rows = [r for r in rows if getattr(r, "ray_namespace", settings.ray_namespace) == settings.ray_namespace]
    if not rows:
        return None
    alive = [r for r in rows if r.state != "DEAD"]
    row = (alive or rows)[-1]
    cause = getattr(row, "death_cause", None)
    return {"state": row.state, "restarts": int(getattr(row, "num_restarts", 0) or 0), "pid": row.pid,
            "death_cause": json.dumps(cause, default=str)[:500] if cause else None}


def health_advice(health: dict[str, Any] | None) -> str:
    """One line for ``memos status``: what the kernel actor's state means and the command that fixes it."""
    if health is None:
        return "Ray knows no kernel actor: run 'memos down' then 'memos up'"
    state, restarts = health["state"], health["restarts"]
    if state == "ALIVE":
        return f"kernel actor ALIVE (pid {health['pid']}), restarted {restarts} time(s) by Ray"
    if state in ("RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY"):
        return (f"kernel actor {state} (restarted {restarts} time(s)): Ray is bringing it back and recovering the "
                "data dir; clients resend reads and writes meanwhile. Check again in a few seconds; if it stays "
                "there, 'memos down' then 'memos up'")
    return (f"kernel actor {state}: {health.get('death_cause') or 'no cause recorded'}. Fix: 'memos down' then "
            "'memos up' (the data dir is recovered at start)")


#: How long ``memos down`` waits for each kernel actor to close (flush and release its data dir) before killing it.
CLOSE_TIMEOUT_S = 60.0


def down(settings: Settings) -> bool:
    """Stop the kernel actor and the Ray head ``memos up`` started: the processes ``up`` recorded and their
    descendants, never a process that merely names the session (a ``tail -f`` of its log, a Prometheus reading its
    config). Returns False if no cluster was recorded."""
    info = cluster_info(settings)
    if info is None:
        return False
    try:
        host = connect(settings)
        import ray

        # Each kernel closes first (pending read counts written, SQLite and Chroma closed, the data dir's lock
        # released): what was acknowledged is on disk before any process is stopped. Then the actors are killed
        # (no restart) and the processes stopped.
        kernels = {name: actor for name, actor in host.actors.items() if name.startswith("kernel")}
        closing = {name: actor.close.remote() for name, actor in kernels.items()}
        for name, ref in closing.items():
            try:
                ray.get(ref, timeout=CLOSE_TIMEOUT_S)
            except ray.exceptions.RayError as exc:  # a dead or hung actor: its data dir is recovered at the next start
                from memos.logging import get_logger

                get_logger("memos.hosting").warning("down_close_failed", actor=name, error=str(exc)[:500])
        for actor in host.actors.values():
            ray.kill(actor)
        ray.shutdown()
    except BackendError:
        pass  # already gone: still stop the head and forget it
    recorded = info.get("processes")
    if recorded is None:  # a cluster.json from before processes were recorded: Ray's own components of the session
        recorded = [p for p in session_processes(info.get("session_dir"), info.get("address"), since=0.0)
                    if p["ray"]]
    stop_processes(recorded)
    settings.cluster_file.unlink(missing_ok=True)
    return True


def _is_ray_component(name: str, cmdline: str) -> bool:
    return name in ("raylet", "gcs_server") or any(
        mark in cmdline for mark in ("ray/_private/", "ray/dashboard/", "ray/autoscaler/", "default_worker.py", "ray::")
    )


def session_processes(session_dir: str | None, gcs_address: str | None, *, since: float) -> list[dict[str, Any]]:
    """The processes of a Ray session that started at or after ``since`` (epoch s): those whose command line names
    the session or its GCS address (the Ray client server names only the address), with their descendants (the
    dashboard's module processes name neither). Each as ``{"pid", "create_time", "name", "ray"}``; ``ray`` says it
    looks like a Ray component. Never this process."""
    import psutil

    if not session_dir and not gcs_address:
        return []
    name = Path(session_dir).name if session_dir else None
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = " ".join(proc.info.get("cmdline") or ())
        ours = (name is not None and name in cmdline) or (gcs_address is not None and f"--address={gcs_address}" in cmdline)
        if not ours or proc.pid == os.getpid() or (proc.info.get("create_time") or 0) < since - 1.0:
            continue
        found[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            found.update({c.pid: c for c in proc.children(recursive=True) if c.pid != os.getpid()})
    out = []
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.cmdline())
            out.append({"pid": proc.pid, "create_time": proc.create_time(), "name": proc.name(),
                        "ray": _is_ray_component(proc.name(), cmdline)})
    return sorted(out, key=lambda p: p["pid"])


#: Ray components known to ignore SIGTERM while the rest of the cluster stops (Ray's ``gcs_server`` and the
#: autoscaler's ``monitor.py``): ``stop_processes`` gives them ``STUBBORN_GRACE_S`` before SIGKILL, not the full grace.
#: They hold no memos data (the kernel actors are closed before, see ``down``).
STUBBORN_GRACE_S = 1.0


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """The processes still running after up to ``timeout`` s. A zombie counts as gone: it has exited and let go of
    its ports, and an orphan's zombie waits for init to reap it (psutil's own wait counts it alive until then, a
    second or more in some containers)."""
    import psutil

    def running(proc: Any) -> bool:
        try:
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if running(p)]
    return alive


def _stop_group(procs: list[Any], grace: float, stubborn_grace: float) -> None:
    """SIGTERM to all of ``procs``, SIGKILL to the stubborn ones still running after ``stubborn_grace`` s and to
    the rest after ``grace`` s."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = _wait_gone(procs, min(grace, stubborn_grace))
    if grace > stubborn_grace:
        alive = _wait_gone([p for p in alive if not _stubborn(p)], grace - stubborn_grace) + \
            [p for p in alive if _stubborn(p)]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _wait_gone(alive, 5.0)  # until the killed ones let go of their ports


def _stubborn(proc: Any) -> bool:
    import psutil

    try:
        name, cmdline = proc.name(), " ".join(proc.cmdline())
    except psutil.Error:
        return False
    return name == "gcs_server" or ("ray/autoscaler/" in cmdline and "monitor.py" in cmdline)  # v1 and v2


def stop_processes(recorded: list[dict[str, Any]], timeout: float = 15.0) -> list[int]:
    """Stop the recorded processes that still run (same pid *and* start time: a reused pid is someone else's) and
    their descendants, in the order of Ray's own ``ray stop``: the raylet first (its workers and agents share its
    fate), then everything else, then the GCS last (the others report to it while they exit). Each group gets
    SIGTERM, then SIGKILL after ``timeout`` s; the components known to ignore SIGTERM (``STUBBORN_GRACE_S``) after
    that much. Returns the pids stopped."""
    import psutil

    procs: dict[int, Any] = {}
    for record in recorded:
        try:
            proc = psutil.Process(int(record["pid"]))
            if abs(proc.create_time() - float(record["create_time"])) > 0.5:
                continue
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
        procs[proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            procs.update({c.pid: c for c in proc.children(recursive=True)})
    procs.pop(os.getpid(), None)
    def named(proc: Any) -> str:
        with contextlib.suppress(psutil.Error):
            return proc.name()
        return ""

    raylets = [p for p in procs.values() if named(p) == "raylet"]
    gcs = [p for p in procs.values() if named(p) == "gcs_server"]
    others = [p for p in procs.values() if p not in raylets and p not in gcs]
    for group in (raylets, others, gcs):
        _stop_group(group, timeout, min(timeout, STUBBORN_GRACE_S))
    return sorted(procs)
