"""``memos bench soak --kill-actor``: SIGKILL the kernel actor's process while clients write through Ray, let Ray
restart it, and check that no acknowledged write was lost and none was written twice.

A private local Ray (127.0.0.1, no dashboard, no model host) runs the kernel actor on a fresh data dir. ``writers``
client threads, each its own principal, write unique texts as fast as the kernel takes them, through one
``RayTransport`` (which resends a write whose answer was lost, with its idempotency key). The main thread kills the
actor's worker process with SIGKILL ``kills`` times, at random moments, and after each kill measures how long the
kernel was unreachable: from the kill until a ping answers from the restarted process (which has opened the data
dir again, taken its lock and recovered it). At the end every memory of the cube is listed and compared with what
the writers were told:

- **lost**: acknowledged writes not in the cube (must be 0);
- **duplicated**: texts present more than once (must be 0: a resent write returns the memory it wrote);
- **failed**: writes that raised (a resend window ran out); allowed, and not counted as acknowledged;
- **committed unacknowledged**: in the cube but never acknowledged (only possible for a failed write);
- **resends**: calls the transport resent after a lost answer, and **unreachable** seconds per kill.

Runs in the calling process (it starts Ray with ``ray.init(address="local")``): run it from the CLI or a fresh
process, never from one already attached to a Ray cluster.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from memos.client import Memos
from memos.config import Settings
from memos.errors import MemosError
from memos.storage.owner import read_owner

CUBE = "soak/actor"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_actor_soak(
    kills: int = 3,
    *,
    writers: int = 4,
    kill_every_s: tuple[float, float] = (2.0, 4.0),
    settle_s: float = 2.0,
    home: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    embedder: str = "hashing",
) -> dict[str, Any]:
    """Kill the kernel actor ``kills`` times under ``writers`` concurrent writers; return the report.

    Each kill comes ``uniform(*kill_every_s)`` seconds after the kernel answered again; the writers stop
    ``settle_s`` after the last restart.

    Raises:
        ValueError: ``kills < 1``, ``writers < 1`` or a bad window.
    """
    if kills < 1 or writers < 1 or not 0 < kill_every_s[0] <= kill_every_s[1]:
        raise ValueError("need kills >= 1, writers >= 1 and 0 < kill_every_s[0] <= kill_every_s[1]")
    from memos.hosting import ray_host

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="memos-actor-soak-") as scratch:
        settings = Settings(home=Path(home) if home is not None else Path(scratch) / "home", model=None,
                            embedder=embedder, dashboard_port=_free_port(), metrics_export_port=_free_port(),
                            ray_namespace=f"memos-soak-{os.getpid()}")
        host = ray_host.start_embedded(settings, dashboard=False)
        try:
            result = _soak(host.transport, settings, kills, writers, kill_every_s, settle_s, rng)
        finally:
            host.shutdown()
        # The floor of a restart, measured in the same run: opening the kernel on the same (now larger) data dir in
        # this process, without Ray. Unreachable time above it is Ray noticing the death and starting a worker.
        from memos.kernel.factory import open_kernel

        opened = time.monotonic()
        open_kernel(settings, owner="memos bench soak --kill-actor").close()
        result["open_kernel_s"] = round(time.monotonic() - opened, 3)
    result["settings"] = {"kills": kills, "writers": writers, "kill_every_s": list(kill_every_s), "seed": seed,
                          "embedder": embedder}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "actor-soak.json").write_text(json.dumps(result, indent=2))
        (out / "actor-soak.md").write_text("# memos soak: kernel actor killed\n\n"
                                           + "\n".join(f"- {line}" for line in summary_lines(result)) + "\n")
    for line in summary_lines(result):
        print(line)
    return result


def _soak(transport: Any, settings: Settings, kills: int, writers: int, kill_every_s: tuple[float, float],
          settle_s: float, rng: random.Random) -> dict[str, Any]:
    admin = Memos(transport, "soak:admin")
    admin.create_cube(CUBE)
    principals = [f"soak:w{i}" for i in range(writers)]
    for principal in principals:
        admin.grant(CUBE, principal, "write")
    stop = threading.Event()
    acked: dict[str, list[tuple[str, str]]] = {p: [] for p in principals}  # principal -> [(memory id, text)]
    failed: Counter[str] = Counter()

    def write_loop(principal: str) -> None:
        client = Memos(transport, principal)
        n = 0
        while not stop.is_set():
            text = f"{principal} note {n}: the ferry leaves at {n % 24:02d}:00"
            try:
                memory = client.write(CUBE, text)
            except MemosError as exc:
                failed[exc.code] += 1
            else:
                acked[principal].append((memory.id, text))
            n += 1

    threads = [threading.Thread(target=write_loop, args=(p,), name=f"soak-{p}", daemon=True) for p in principals]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    outages: list[dict[str, Any]] = []
    for _ in range(kills):
        time.sleep(rng.uniform(*kill_every_s))
        old_pid = transport.ping()["pid"]
        before = sum(len(a) for a in acked.values())
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        while True:  # the ping waits out the restart (the transport resends it)
            answer = transport.ping()
            if answer["pid"] != old_pid:
                break
            time.sleep(0.01)
        back_at = time.monotonic()
        owner = read_owner(settings.home) or {}
        outages.append({"old_pid": old_pid, "new_pid": answer["pid"], "unreachable_s": round(back_at - killed_at, 3),
                        "acknowledged_before": before, "lock_owner_pid": owner.get("pid")})
    time.sleep(settle_s)
    stop.set()
    for thread in threads:
        thread.join(timeout=180)
    elapsed = time.monotonic() - started
    present = _all_memories(admin)
    return _verify(acked, failed, present, outages, elapsed, transport.retries)


def _all_memories(client: Memos) -> list[tuple[str, str]]:
    out, offset = [], 0
    while True:
        batch = client.list(CUBE, states=("active", "archived", "deleted"), limit=1000, offset=offset)
        out += [(m.id, m.content) for m in batch]
        if len(batch) < 1000:
            return out
        offset += len(batch)


def _verify(acked: dict[str, list[tuple[str, str]]], failed: Counter[str], present: list[tuple[str, str]],
            outages: list[dict[str, Any]], elapsed: float, resends: int) -> dict[str, Any]:
    present_ids = {memory_id for memory_id, _ in present}
    acknowledged = [item for items in acked.values() for item in items]
    acked_ids = {memory_id for memory_id, _ in acknowledged}
    texts = Counter(text for _, text in present)
    unreachable = [o["unreachable_s"] for o in outages]
    return {
        "duration_s": round(elapsed, 1),
        "acknowledged_writes": len(acknowledged),
        "acknowledged_writes_lost": len(acked_ids - present_ids),
        "acknowledged_twice": len(acknowledged) - len(acked_ids),
        "duplicated": sum(n - 1 for n in texts.values() if n > 1),
        "failed_writes": dict(failed),
        "committed_unacknowledged": len(present_ids - acked_ids),
        "memories_in_cube": len(present),
        "resends": resends,
        "kills": outages,
        "restarted_owner_holds_lock": all(o["lock_owner_pid"] == o["new_pid"] for o in outages),
        "unreachable_s": {"max": max(unreachable), "median": round(statistics.median(unreachable), 3),
                          "total": round(sum(unreachable), 3)},
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    u = result["unreachable_s"]
    return [
        f"kernel actor soak: {len(result['kills'])} SIGKILLs of the kernel actor under {result['settings']['writers']}"
        f" writers in {result['duration_s']} s; {result['acknowledged_writes']} writes acknowledged",
        f"acknowledged writes lost: {result['acknowledged_writes_lost']}; duplicated: {result['duplicated']}; "
        f"acknowledged twice: {result['acknowledged_twice']}",
        f"kernel unreachable per kill: max {u['max']:.2f} s, median {u['median']:.2f} s, total {u['total']:.2f} s "
        f"(opening the kernel on the same data dir without Ray: {result.get('open_kernel_s', float('nan')):.2f} s); "
        f"resent calls: {result['resends']}; failed writes: {result['failed_writes'] or 0}; committed "
        f"unacknowledged: {result['committed_unacknowledged']}; restarted actor holds the data dir's lock: "
        f"{result['restarted_owner_holds_lock']}",
    ]
