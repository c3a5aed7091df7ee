"""``memos bench load``: concurrent clients against the kernel's Ray actor, a mixed workload, then a check that
nothing acknowledged was lost.

A private local Ray (127.0.0.1, no dashboard, no model host) runs the kernel actor on a fresh data dir with the
bundled embedder. An owner creates ``cubes`` shared cubes and grants ``write`` on them to every client principal.
Then, for each level of ``clients`` (e.g. 1, 4, 16, 64), that many threads (each its own principal, each with its
own ``Memos`` client over the Ray transport) run for ``seconds``:

- **write** (35%): a new memory whose content carries a unique marker;
- **update** (20%): one of the 32 most recently written memories (so that clients contend), with
  ``expected_version`` the last version this process saw: ``VersionConflict`` is expected and counted, a lost
  update never is;
- **search** (30%): hybrid search of three words over every shared cube, k=10;
- **read** (15%): a memory written earlier.

Reported per level: throughput (acknowledged syscalls per second), p50/p95/p99 latency per op (milliseconds,
measured around the client call, Ray included), conflicts and errors by code. Afterwards every acknowledged write
must be present exactly once (by id, and its marker in exactly one memory's first version) and every acknowledged
update must be the content of its version, with no version acknowledged twice. The verdict line is
``acknowledged writes lost: N``. Writes ``load.json`` and ``load.md`` into ``out_dir``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memos.bench.metrics import percentile
from memos.client import Memos
from memos.config import Settings
from memos.errors import BackendError, MemosError, VersionConflict, error_from_wire
from memos.hosting.ray_host import start_embedded
from memos.progress import Progress

DEFAULT_CLIENTS = (1, 4, 16, 64)
MIX = {"write": 35, "update": 20, "search": 30, "read": 15}
OWNER = "bench:owner"
HOT = 32  # updates go to the most recently written memories
_WORDS = ("harbour", "lantern", "glacier", "orchard", "compass", "meadow", "beacon", "quarry", "ferry", "summit",
          "violin", "granite", "saffron", "tundra", "pylon", "cobalt")


@dataclass
class Ledger:
    """What the kernel acknowledged, shared by the client threads (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    writes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (marker, content)
    order: list[str] = field(default_factory=list)  # ids in acknowledgement order
    versions: dict[str, int] = field(default_factory=dict)  # id -> last version seen acknowledged
    updates: list[tuple[str, int, str]] = field(default_factory=list)  # (id, version, content)
    unknown_writes: int = 0  # writes whose outcome the client could not know (transport failure)


@dataclass
class LevelStats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0


def run_load_bench(
    out_dir: str | Path,
    clients: tuple[int, ...] = DEFAULT_CLIENTS,
    seconds: float = 10.0,
    *,
    cubes: int = 4,
    seed: int = 0,
    home: str | Path | None = None,
    preload: int = 0,
) -> dict[str, Any]:
    """Run the load benchmark and write ``load.json`` and ``load.md`` into ``out_dir``; return the JSON.

    ``home`` is the data dir (a fresh temporary one when None; it must not be in use by another kernel).

    Raises:
        ValueError: no client level, a level below 1, ``seconds <= 0`` or ``cubes < 1``.
        BackendError: Ray or the kernel actor could not start.
    """
    if not clients or min(clients) < 1 or seconds <= 0 or cubes < 1:
        raise ValueError("need client levels >= 1, seconds > 0 and cubes >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="memos-load-") as scratch:
        data_dir = Path(home) if home is not None else Path(scratch) / "home"
        settings = Settings(home=data_dir, model=None, dashboard_port=_free_port(), metrics_export_port=_free_port())
        started = time.perf_counter()
        # Progress on stderr: one unit per client level, one for the verification.
        with Progress("load: starting Ray", total=len(clients) + 1) as bar:
            bar.update(0, note=f"data dir {data_dir}")
            host = start_embedded(settings, dashboard=False)
            try:
                names = [f"bench/shared-{i}" for i in range(cubes)]
                _prepare(host.transport, names, max(clients))
                ledger = Ledger()
                preloaded = _preload(host.transport, names, preload, ledger, random.Random(seed), bar) if preload else None
                levels = []
                for n in clients:
                    bar.update(len(levels), label="load", note=f"{n} clients for {seconds:g} s")
                    levels.append(_run_level(host.transport, names, n, seconds, ledger,
                                             random.Random(seed * 1000 + n)))
                    bar.update(len(levels), note=f"{n} clients: {levels[-1]['throughput_ops_s']} ops/s")
                bar.update(len(levels), label="load: verifying", note=f"{len(ledger.writes)} acknowledged writes")
                verdict = _verify(Memos(host.transport, "system"), names, ledger)
                bar.label = "load"  # the last line says what was done, not the phase it ended in
                bar.update(len(levels) + 1, note="verified")
            finally:
                host.shutdown()
        report = {
            "settings": {"clients": list(clients), "seconds": seconds, "cubes": cubes, "seed": seed, "mix": MIX,
                         "hot_set": HOT, "embedder": settings.embedder, "sqlite_synchronous": settings.sqlite_synchronous},
            "environment": {"python": platform.python_version(), "cpus": os.cpu_count(),
                            "load_average_end": os.getloadavg()},
            "preload": preloaded,
            "levels": levels,
            "verification": verdict,
            "duration_s": round(time.perf_counter() - started, 1),
        }
    (out / "load.json").write_text(json.dumps(report, indent=2))
    (out / "load.md").write_text(render_markdown(report))
    for line in summary_lines(report):
        print(line)
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(transport: Any, cubes: list[str], principals: int) -> None:
    """Shared cubes with write granted to every client principal; one write and one search warm the embedder."""
    owner = Memos(transport, OWNER)
    for name in cubes:
        owner.create_cube(name, exist_ok=True)
        for i in range(principals):
            owner.grant(name, _principal(i), "write")
    warm = owner.write(cubes[0], "warm-up: the embedder loads on first use")
    owner.search("warm-up", cubes)
    owner.purge(warm.id)


def _preload(transport: Any, cubes: list[str], n: int, ledger: Ledger, rng: random.Random,
             bar: Progress) -> dict[str, Any]:
    """Fill the cubes with ``n`` memories through ``write_many`` (1000 per call, round robin over the cubes) before
    the levels run; they join the ledger, so the verification checks them too. Returns the ingest rate.

    Raises:
        MemosError: an item was refused (its typed error).
    """
    owner = Memos(transport, OWNER)
    started = time.perf_counter()
    for number, start in enumerate(range(0, n, 1000)):
        cube = cubes[number % len(cubes)]
        contents = [(f"lm{rng.getrandbits(64):016x}", " ".join(rng.sample(_WORDS, 6))) for _ in range(min(1000, n - start))]
        texts = [f"preloaded note {marker}: {words}" for marker, words in contents]
        result = owner.write_many(texts, cube=cube)
        for (marker, _), text, outcome in zip(contents, texts, result.results, strict=True):
            if outcome.error:
                raise error_from_wire(outcome.error)
            ledger.writes[outcome.id] = (marker, text)
            ledger.versions[outcome.id] = 1
        bar.update(0, label="load: preloading", note=f"{start + len(texts)}/{n} memories through write_many")
    seconds = time.perf_counter() - started
    return {"memories": n, "seconds": round(seconds, 2), "memories_per_s": round(n / seconds, 1),
            "path": "write_many, 1000 per call, through the Ray kernel actor"}


def _principal(i: int) -> str:
    return f"bench:client-{i}"


def _run_level(transport: Any, cubes: list[str], n: int, seconds: float, ledger: Ledger,
               rng: random.Random) -> dict[str, Any]:
    stats = LevelStats()
    stats_lock = threading.Lock()
    seeds = [rng.getrandbits(32) for _ in range(n)]
    start = threading.Barrier(n + 1)
    deadline: list[float] = []

    def client(i: int) -> None:
        mem = Memos(transport, _principal(i))
        local = random.Random(seeds[i])
        mine = LevelStats()
        start.wait()
        seq = 0
        while time.perf_counter() < deadline[0]:
            seq += 1
            op = local.choices(list(MIX), list(MIX.values()))[0]
            _one_op(mem, op, cubes, ledger, local, mine, f"{n}-{i}-{seq}")
        with stats_lock:
            for key, values in mine.latencies.items():
                stats.latencies[key].extend(values)
            stats.errors.update(mine.errors)
            stats.conflicts += mine.conflicts

    threads = [threading.Thread(target=client, args=(i,), name=f"load-client-{i}") for i in range(n)]
    for t in threads:
        t.start()
    deadline.append(time.perf_counter() + seconds)
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    ops = {}
    for op in MIX:
        values = stats.latencies.get(op, [])
        ops[op] = {
            "ok": len(values),
            **({f"p{q}_ms": round(percentile(values, q) * 1000, 2) for q in (50, 95, 99)} if values else {}),
        }
    acknowledged = sum(v["ok"] for v in ops.values())
    return {
        "clients": n,
        "seconds": round(elapsed, 2),
        "acknowledged": acknowledged,
        "throughput_ops_s": round(acknowledged / elapsed, 1),
        "ops": ops,
        "conflicts": stats.conflicts,
        "errors": dict(stats.errors),
    }


def _one_op(mem: Memos, op: str, cubes: list[str], ledger: Ledger, rng: random.Random, stats: LevelStats,
            tag: str) -> None:
    """One syscall of the mix; its latency counts only when it was acknowledged."""
    with ledger.lock:
        hot = ledger.order[-HOT:]
        target = rng.choice(hot) if hot else None
        known = rng.choice(ledger.order) if ledger.order else None
        expected = ledger.versions.get(target) if target else None
    if op in ("update", "read") and target is None:
        op = "write"
    started = time.perf_counter()
    try:
        if op == "write":
            marker = f"lm{rng.getrandbits(64):016x}"
            content = f"load note {tag} {marker}: " + " ".join(rng.sample(_WORDS, 4))
            try:
                m = mem.write(rng.choice(cubes), content)
            except BackendError:
                with ledger.lock:
                    ledger.unknown_writes += 1
                raise
            with ledger.lock:
                ledger.writes[m.id] = (marker, content)
                ledger.order.append(m.id)
                ledger.versions[m.id] = max(ledger.versions.get(m.id, 0), m.version)
        elif op == "update":
            content = f"load update {tag}: " + " ".join(rng.sample(_WORDS, 4))
            m = mem.update(target, content=content, expected_version=expected)
            with ledger.lock:
                ledger.updates.append((m.id, m.version, content))
                ledger.versions[m.id] = max(ledger.versions.get(m.id, 0), m.version)
        elif op == "search":
            mem.search(" ".join(rng.sample(_WORDS, 3)), cubes, k=10)
        else:
            mem.read(known)
    except VersionConflict as exc:
        stats.conflicts += 1
        with ledger.lock:
            ledger.versions[target] = max(ledger.versions.get(target, 0), int(exc.details.get("current") or 0))
        return
    except MemosError as exc:
        stats.errors[f"{op}:{exc.code}"] += 1
        return
    stats.latencies[op].append(time.perf_counter() - started)


def _verify(system: Memos, cubes: list[str], ledger: Ledger) -> dict[str, Any]:
    """Every acknowledged write present exactly once, every acknowledged update the content of its version."""
    current: dict[str, Any] = {}
    for cube in cubes:
        offset = 0
        while True:
            page = system.list(cube, states=("active", "archived", "deleted"), limit=1000, offset=offset)
            current.update({m.id: m for m in page})
            offset += len(page)
            if len(page) < 1000:
                break
    versions: dict[str, dict[int, str]] = {}
    for memory_id, m in current.items():
        versions[memory_id] = {1: m.content} if m.version == 1 else {v.version: v.content for v in system.history(memory_id)}
    by_marker: Counter[str] = Counter()
    for history in versions.values():
        first = history.get(1, "")
        for word in first.split():
            if word.startswith("lm") and word.endswith(":"):
                by_marker[word[:-1]] += 1
    missing = [i for i in ledger.writes if i not in versions or versions[i].get(1) != ledger.writes[i][1]]
    duplicated = [i for i, (marker, _) in ledger.writes.items() if by_marker[marker] > 1]
    seen_versions = Counter((i, v) for i, v, _ in ledger.updates)
    updates_lost = [u for u in ledger.updates if versions.get(u[0], {}).get(u[1]) != u[2]]
    return {
        "acknowledged_writes": len(ledger.writes),
        "acknowledged_updates": len(ledger.updates),
        "memories_stored": len(current),
        "writes_of_unknown_outcome": ledger.unknown_writes,
        "acknowledged_writes_lost": len(missing) + len(duplicated),
        "writes_missing": len(missing),
        "writes_duplicated": len(duplicated),
        "acknowledged_updates_lost": len(updates_lost),
        "versions_acknowledged_twice": sum(1 for n in seen_versions.values() if n > 1),
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    v = report["verification"]
    lines = [
        f"{lv['clients']:>3} clients: {lv['throughput_ops_s']} ops/s, "
        + ", ".join(f"{op} p50/p95/p99 {o.get('p50_ms', '-')}/{o.get('p95_ms', '-')}/{o.get('p99_ms', '-')} ms"
                    for op, o in lv["ops"].items())
        + f"; conflicts {lv['conflicts']}; errors {lv['errors'] or 0}"
        for lv in report["levels"]
    ]
    lines.append(
        f"verified: {v['acknowledged_writes']} acknowledged writes, {v['acknowledged_updates']} acknowledged updates, "
        f"{v['memories_stored']} memories stored; updates lost: {v['acknowledged_updates_lost']}; versions "
        f"acknowledged twice: {v['versions_acknowledged_twice']}"
    )
    lines.append(f"acknowledged writes lost: {v['acknowledged_writes_lost']}")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    head = (f"# memos load benchmark\n\n{s['seconds']} s per level, mix {s['mix']}, {s['cubes']} shared cubes, "
            f"updates on the {s['hot_set']} newest memories, embedder {s['embedder']}, SQLite synchronous="
            f"{s['sqlite_synchronous']}; load average at the end {report['environment']['load_average_end']}.\n\n")
    if report.get("preload"):
        p = report["preload"]
        head += f"Preloaded {p['memories']} memories through write_many at {p['memories_per_s']} memories/s.\n\n"
    rows = ["| clients | ops/s | op | ok | p50 ms | p95 ms | p99 ms | conflicts | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for lv in report["levels"]:
        for i, (op, o) in enumerate(lv["ops"].items()):
            first = i == 0
            rows.append(
                f"| {lv['clients'] if first else ''} | {lv['throughput_ops_s'] if first else ''} | {op} | {o['ok']} | "
                f"{o.get('p50_ms', '-')} | {o.get('p95_ms', '-')} | {o.get('p99_ms', '-')} | "
                f"{lv['conflicts'] if first else ''} | {(lv['errors'] or '') if first else ''} |"
            )
    return head + "\n".join(rows) + "\n\n" + "\n".join(f"- {line}" for line in summary_lines(report)[-2:]) + "\n"
