"""``memos bench soak``: kill the kernel's process with SIGKILL at random points of a mixed workload, many times, and
check after every restart that nothing acknowledged was lost and nothing was left half done.

Each cycle is one child process running an in-process kernel (no model host) on the same data dir. The child
*restarts* the kernel (start-up replays the index outbox and rolls back interrupted migrations), *verifies*
everything acknowledged in earlier cycles against the expectations the parent wrote, prints that report, then runs
a mixed workload (write, update with ``expected_version``, delete, restore, fuse, purge, search, read) and prints one
line per acknowledged syscall: printed only after ``execute`` returned, so after its transaction committed. The
parent kills it at a random moment, folds the acknowledgements it received into the expectations, and starts the
next cycle. A last child only verifies.

What a restart must show, counted per cycle:

- **durability**: every acknowledged write, update, delete, restore and fuse is there at its version, with its
  content and state; every acknowledged purge left no row and no index entry. A syscall that committed but whose
  acknowledgement the kill cut off may add versions (allowed), or, for a purge, remove the memory: the child says
  which memory it is about to purge before it calls, so such a memory is counted apart, not as lost.
- **no half versions**: each memory's versions are exactly 1..n, its current version is n, only version n is open
  (``valid_to`` = forever), its state and kind are version n's; no memory without versions; no migration left
  ``started``.
- **index reconciled**: after the start-up replay the vector index holds exactly the versions SQLite says it should,
  with their metadata (times compared to within a few ulps: Chroma does not return every float64 bit for bit),
  ``KernelService.doctor(repair=True)`` finds nothing to add or remove, and dense search finds a sample of
  acknowledged memories by their exact text.
- **no orphan blobs**: every file under the blob dir belongs to a current version.
- **SQLite integrity**: ``PRAGMA integrity_check`` is ``ok``.

Writes ``soak.json`` and ``soak.md`` into ``out_dir`` when given. The embedder is the feature-hashing one by
default (a fresh process per cycle would otherwise spend most of its time loading all-MiniLM-L6-v2); ``"minilm"``
uses the real one.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

from memos.config import Settings
from memos.kernel.factory import open_embedder, open_kernel
from memos.kernel.indexer import entry_metadata, same_metadata
from memos.models.hashing import HashingEmbedder
from memos.progress import Progress
from memos.service import KernelService
from memos.storage.sqlite import FOREVER

PRINCIPAL = "soak:writer"
CUBE = "soak/main"
OPS = {"write": 30, "update": 25, "search": 12, "read": 10, "delete": 8, "restore": 6, "fuse": 5, "purge": 4}
LOSS_KEYS = ("write", "update", "delete", "restore", "fuse", "fuse:retired")
_WORDS = ("harbour", "lantern", "glacier", "orchard", "compass", "meadow", "beacon", "quarry", "ferry", "summit")
_CHILD = "import sys; from memos.bench.soak import child_main; child_main(sys.argv[1:])"

EmbedderName = Literal["hashing", "minilm"]


def run_crash_soak(
    cycles: int,
    *,
    home: str | Path | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    kill_after_s: tuple[float, float] = (0.05, 1.5),
    embedder: EmbedderName = "hashing",
    dense_sample: int = 25,
    start_timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Run ``cycles`` kill/restart cycles on ``home`` (a fresh temporary dir when None) and return the report.

    Each cycle's child is killed ``uniform(*kill_after_s)`` seconds after it reported ready.

    Raises:
        ValueError: ``cycles < 1`` or a bad kill window.
        RuntimeError: a child failed to start or verify within ``start_timeout_s`` (its stderr tail is included).
    """
    if cycles < 1 or not 0 <= kill_after_s[0] <= kill_after_s[1]:
        raise ValueError("need cycles >= 1 and 0 <= kill_after_s[0] <= kill_after_s[1]")
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="memos-soak-") as scratch:
        base = Path(home) if home is not None else Path(scratch) / "home"
        base.mkdir(parents=True, exist_ok=True)
        expected: dict[str, Any] = {}
        started = time.perf_counter()
        reports = []
        # Progress on stderr: one unit per cycle, the last one (verification only) included.
        with Progress("soak", total=cycles + 1) as bar:
            for cycle in range(cycles + 1):
                workload = cycle < cycles
                kill_at = rng.uniform(*kill_after_s) if workload else None
                report, acks = _run_child(base, expected, cycle, seed, kill_at, embedder, dense_sample,
                                          start_timeout_s)
                for ack in acks:
                    _expect(expected, ack)
                report["acknowledged"] = dict(Counter(a["op"] for a in acks if not a.get("intent")))
                report["killed_after_s"] = kill_at
                reports.append(report)
                lost = sum(report.get("lost", {}).values())
                bar.update(cycle + 1, note=f"{len(expected)} memories expected, {lost} lost"
                           + ("" if workload else " (final verification)"))
        result = _summarise(reports, cycles, seed, kill_after_s, embedder, time.perf_counter() - started)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2))
        (out / "soak.md").write_text(render_markdown(result))
    for line in summary_lines(result):
        print(line)
    return result


# ---------------------------------------------------------------------------------------------------------- parent


def _run_child(home: Path, expected: dict[str, Any], cycle: int, seed: int, kill_at: float | None,
               embedder: EmbedderName, dense_sample: int, start_timeout_s: float) -> tuple[dict[str, Any], list[dict]]:
    """One restart: the child verifies, reports, then (if ``kill_at``) works until SIGKILLed. Returns its
    verification report and the acknowledgements it printed."""
    expectations = home / "soak-expected.json"
    expectations.write_text(json.dumps(expected))
    log = home / f"soak-child-{cycle}.stderr"
    args = [str(home), str(expectations), str(seed * 100_003 + cycle), "work" if kill_at is not None else "verify",
            embedder, str(dense_sample)]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, *args], stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    report: dict[str, Any] | None = None
    acks: list[dict[str, Any]] = []
    deadline = time.monotonic() + start_timeout_s
    try:
        while report is None or "ready" not in report:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"soak child {cycle} did not report within {start_timeout_s} s") from None
            if line is None:
                break
            message = json.loads(line)
            if "verified" in message:
                report = message["verified"]
            elif "ready" in message and report is not None:
                report["ready"] = True
        if report is None:
            raise RuntimeError(f"soak child {cycle} ended without a report: {_tail(log)}")
        if kill_at is not None:
            time.sleep(kill_at)
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        reader.join(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    while True:
        line = lines.get_nowait() if not lines.empty() else None
        if line is None:
            break
        if line.endswith("\n"):  # a line cut by the kill was not fully acknowledged
            message = json.loads(line)
            if "ack" in message:
                acks.append(message["ack"])
            elif "intent" in message:
                acks.append({**message["intent"], "intent": True})
    report.pop("ready", None)
    report["cycle"] = cycle
    report["exit"] = "killed" if proc.returncode == -signal.SIGKILL else proc.returncode
    if kill_at is None and proc.returncode != 0:
        raise RuntimeError(f"soak verifier exited with {proc.returncode}: {_tail(log)}")
    return report, acks


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:]


def _expect(expected: dict[str, Any], ack: dict[str, Any]) -> None:
    """Fold one acknowledgement (or announced purge) into the expectations: memory id -> {"versions": {v: [op,
    content, state]}, "purged": acknowledged purge, "maybe_purged": a purge was called and not acknowledged}."""

    def memory(memory_id: str) -> dict[str, Any]:  # also one whose write committed unacknowledged before a kill
        return expected.setdefault(memory_id, {"versions": {}, "purged": False, "maybe_purged": False})

    if ack["op"] == "purge":
        memory(ack["id"])["purged" if not ack.get("intent") else "maybe_purged"] = True
        return
    memory(ack["id"])["maybe_purged"] = False  # acknowledged after the purge was called: the purge did not happen
    memory(ack["id"])["versions"][str(ack["version"])] = [ack["op"], ack["content"], ack["state"]]
    for source in ack.get("retired", ()):
        memory(source["id"])["versions"][str(source["version"])] = ["fuse:retired", source["content"], "archived"]


def _summarise(reports: list[dict[str, Any]], cycles: int, seed: int, kill_after_s: tuple[float, float],
               embedder: str, elapsed: float) -> dict[str, Any]:
    """Totals. Losses and purges are judged by the last verification, which checks everything ever acknowledged
    (each verification is cumulative: summing them would count one loss once per later restart); the state checks
    of each restart (half versions, index, blobs, integrity) are summed over restarts."""
    final = reports[-1]
    totals: Counter[str] = Counter()
    acknowledged: Counter[str] = Counter()
    for report in reports:
        acknowledged.update(report["acknowledged"])
        totals["child_errors"] += int(report["killed_after_s"] is not None and report["exit"] != "killed")
        totals["restarts_with_loss"] += int(any(report["lost"].values()) or report["purged_left"] > 0)
        for key in ("half_versions", "outbox_replayed", "index_missing", "index_extra", "index_outdated",
                    "doctor_added", "doctor_removed", "doctor_fixed", "dense_checked", "dense_misses", "orphan_blobs",
                    "integrity_failures"):
            totals[key] += report[key]
    totals.update({"purged_left": final["purged_left"], "purged_unacknowledged": final["purged_unacknowledged"]})
    totals.update({f"lost:{key}": n for key, n in final["lost"].items()})
    return {
        "settings": {"cycles": cycles, "seed": seed, "kill_after_s": list(kill_after_s), "embedder": embedder},
        "duration_s": round(elapsed, 1),
        "acknowledged": dict(acknowledged),
        "totals": dict(totals),
        "acknowledged_writes_lost": totals["lost:write"],
        "acknowledged_changes_lost": sum(totals[f"lost:{k}"] for k in LOSS_KEYS),
        "cycles": reports,
    }


def summary_lines(result: dict[str, Any]) -> list[str]:
    t = result["totals"]
    acked = result["acknowledged"]
    return [
        f"crash soak: {result['settings']['cycles']} SIGKILL cycles in {result['duration_s']} s; acknowledged "
        + ", ".join(f"{acked.get(op, 0)} {op}" for op in ("write", "update", "delete", "restore", "fuse", "purge")),
        f"acknowledged writes lost: {result['acknowledged_writes_lost']}",
        f"acknowledged changes lost (update/delete/restore/fuse): "
        f"{result['acknowledged_changes_lost'] - result['acknowledged_writes_lost']}; purged memories left: "
        f"{t['purged_left']}; purges that committed unacknowledged: {t['purged_unacknowledged']}; restarts that "
        f"found a loss: {t['restarts_with_loss']}",
        f"summed over restarts: half versions: {t['half_versions']}; index ops replayed at restart: {t['outbox_replayed']}; index after "
        f"restart: {t['index_missing']} missing, {t['index_extra']} extra, {t['index_outdated']} outdated; doctor "
        f"--repair then: {t['doctor_added']} added, {t['doctor_removed']} removed, {t['doctor_fixed']} metadata "
        f"rewritten; dense misses: "
        f"{t['dense_misses']} of {t['dense_checked']}; orphan blobs: {t['orphan_blobs']}; integrity failures: "
        f"{t['integrity_failures']}; children that ended on their own: {t['child_errors']}",
    ]


def render_markdown(result: dict[str, Any]) -> str:
    rows = ["| cycle | killed after s | acks | lost | half versions | outbox replayed | index missing/extra/outdated "
            "| doctor added/removed | dense misses | orphan blobs | integrity |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["cycles"]:
        killed = "-" if r["killed_after_s"] is None else f"{r['killed_after_s']:.2f}"
        rows.append(
            f"| {r['cycle']} | {killed} | {sum(r['acknowledged'].values())} | {sum(r['lost'].values())} | "
            f"{r['half_versions']} | {r['outbox_replayed']} | {r['index_missing']}/{r['index_extra']}/{r['index_outdated']} | "
            f"{r['doctor_added']}/{r['doctor_removed']} | "
            f"{r['dense_misses']}/{r['dense_checked']} | {r['orphan_blobs']} | {r['integrity']} |"
        )
    return "# memos crash soak\n\n" + "\n".join(f"- {line}" for line in summary_lines(result)) + "\n\n" + "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------------------- child


def child_main(argv: list[str]) -> None:
    """The child process: restart the kernel, verify, report; then, in ``work`` mode, run the workload until killed.

    argv: home, expectations file, seed, ``work`` | ``verify``, embedder name, dense sample size.
    """
    home, expectations, seed, mode, embedder, dense_sample = argv
    settings = Settings(home=Path(home), model=None, sqlite_synchronous="FULL")
    pending = _outbox_rows(settings.db_path)
    chosen = HashingEmbedder() if embedder == "hashing" else open_embedder(settings)
    service = KernelService(open_kernel(settings, embedder=chosen))
    chosen.embed(["soak warm-up"])  # a model loads on first use: the kill window starts with a loaded embedder
    expected = json.loads(Path(expectations).read_text())
    report = verify(service, expected, random.Random(int(seed)), int(dense_sample))
    report["outbox_replayed"] = pending
    _say({"verified": report})
    if mode == "work":
        _say({"ready": True})
        _work(service, random.Random(int(seed)))
    service.close()


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _outbox_rows(db_path: Path) -> int:
    """Index changes committed but not applied when the last process died (0 for a new data dir)."""
    if not db_path.exists():
        return 0
    with closing(sqlite3.connect(db_path)) as db:
        try:
            return int(db.execute("SELECT COUNT(*) FROM index_outbox").fetchone()[0])
        except sqlite3.OperationalError:  # the first process died before it created the schema
            return 0


def _work(service: KernelService, rng: random.Random, deadline_s: float = 300.0) -> None:
    """Mixed workload as the only writer of CUBE, printing each acknowledgement. Ends by itself after
    ``deadline_s`` (the parent normally kills it long before)."""
    call = service.call
    call(PRINCIPAL, {"op": "create_cube", "name": CUBE, "exist_ok": True})
    known: dict[str, dict[str, Any]] = {}  # id -> current version, state, content (this process is the only writer)
    offset = 0
    while True:
        page = call(PRINCIPAL, {"op": "list", "cube": CUBE, "states": ["active", "archived", "deleted"], "limit": 1000,
                                "offset": offset})["ok"]["memories"]
        known.update({m["id"]: m for m in page})
        offset += len(page)
        if len(page) < 1000:
            break
    ops, weights = list(OPS), list(OPS.values())
    ends = time.monotonic() + deadline_s
    n = 0
    while time.monotonic() < ends:
        n += 1
        op = rng.choices(ops, weights)[0]
        live = sorted(known)
        target = known[rng.choice(live)] if live else None
        if op == "write" or target is None:
            words = " ".join(rng.sample(_WORDS, 3))
            answer = call(PRINCIPAL, {"op": "write", "cube": CUBE, "content": f"soak note {rng.getrandbits(48):012x}: {words}",
                                      "source": rng.choice(["conversation", "tool"])})
            _ack(known, "write", answer)
        elif op == "update":
            answer = call(PRINCIPAL, {"op": "update", "id": target["id"], "expected_version": target["version"],
                                      "content": f"{target['content'].split(' | ')[0]} | revision {n}"})
            _ack(known, "update", answer)
        elif op in ("delete", "restore"):
            syscall = {"op": op, "id": target["id"]}
            if op == "delete":
                syscall["expected_version"] = target["version"]
            _ack(known, op, call(PRINCIPAL, syscall))
        elif op == "fuse":
            active = [m for m in known.values() if m["state"] == "active"]
            if len(active) < 2:
                continue
            sources = rng.sample(active, 2)
            keep = rng.random() < 0.5
            answer = call(PRINCIPAL, {"op": "fuse", "ids": [s["id"] for s in sources], "cube": CUBE, "keep_sources": keep,
                                      "content": f"soak fusion {rng.getrandbits(48):012x}: " + " ".join(rng.sample(_WORDS, 3))})
            retired = [] if keep else [{"id": s["id"], "version": s["version"] + 1, "content": s["content"]} for s in sources]
            if "ok" in answer:
                for s in retired:
                    known[s["id"]] = {**known[s["id"]], "version": s["version"], "state": "archived"}
            _ack(known, "fuse", answer, retired=retired)
        elif op == "purge":
            _say({"intent": {"op": "purge", "id": target["id"]}})  # a kill may cut off the acknowledgement
            if "ok" in call(PRINCIPAL, {"op": "purge", "id": target["id"]}):
                known.pop(target["id"])
                _say({"ack": {"op": "purge", "id": target["id"]}})
        elif op == "search":
            call(PRINCIPAL, {"op": "search", "query": " ".join(rng.sample(_WORDS, 2)), "cubes": [CUBE], "k": 10})
        else:
            call(PRINCIPAL, {"op": "read", "id": target["id"]})


def _ack(known: dict[str, dict[str, Any]], op: str, answer: dict[str, Any], **extra: Any) -> None:
    if "ok" not in answer:
        return
    m = answer["ok"]
    known[m["id"]] = m
    _say({"ack": {"op": op, "id": m["id"], "version": m["version"], "content": m["content"], "state": m["state"], **extra}})


# ---------------------------------------------------------------------------------------------------------- checks


def verify(service: KernelService, expected: dict[str, Any], rng: random.Random, dense_sample: int) -> dict[str, Any]:
    """Check a freshly started kernel against the acknowledged expectations (see the module docstring)."""
    kernel = service.kernel
    lost: Counter[str] = Counter()
    purged_left = purged_unacknowledged = 0
    sample: list[tuple[str, str]] = []
    index_ids = kernel.index.ids()
    for memory_id, memory in sorted(expected.items()):
        found = {row.version: row for row in kernel.store.history(memory_id)}  # the store: reads are not audited
        if memory["purged"]:
            purged_left += int(bool(found) or any(e.startswith(f"{memory_id}@") for e in index_ids))
            continue
        if not found and memory["maybe_purged"]:
            purged_unacknowledged += 1
            continue
        for version, (op, content, state) in memory["versions"].items():
            got = found.get(int(version))
            if got is None or got.content != content or got.state != state:
                lost[op] += 1
        last = max((int(v) for v in memory["versions"]), default=0)
        if found and max(found) == last and found[last].state == "active":
            sample.append((memory_id, found[last].content))
    drift = index_drift(kernel)
    dense_misses = 0
    for memory_id, content in rng.sample(sample, min(dense_sample, len(sample))):
        hits = service.call("system", {"op": "search", "query": content, "cubes": [CUBE], "k": 10, "mode": "dense"})
        dense_misses += int(memory_id not in {h["memory"]["id"] for h in hits["ok"]["hits"]})
    doctor = service.doctor(repair=True)
    blobs = [p for p in kernel.blob_dir.rglob("*") if p.is_file()] if kernel.blob_dir.exists() else []
    referenced = kernel.store.all_payload_paths()  # a file no version references is an orphan
    return {
        "lost": {key: lost[key] for key in LOSS_KEYS},
        "purged_left": purged_left,
        "purged_unacknowledged": purged_unacknowledged,
        "half_versions": half_versions(kernel.store.path),
        "index_missing": drift["missing"],
        "index_extra": drift["extra"],
        "index_outdated": drift["outdated"],
        "doctor_added": doctor["reconcile"]["added"],
        "doctor_removed": doctor["reconcile"]["removed"],
        "doctor_fixed": doctor["reconcile"]["fixed_metadata"],
        "dense_checked": min(dense_sample, len(sample)),
        "dense_misses": dense_misses,
        "orphan_blobs": sum(1 for p in blobs if str(p) not in referenced),
        "integrity": doctor["sqlite_integrity"],
        "integrity_failures": int(doctor["sqlite_integrity"] != "ok"),
    }


def index_drift(kernel: Any) -> dict[str, int]:
    """How far the vector index is from what SQLite says it should hold: missing, extra and outdated entries."""
    expected = kernel.store.indexable_entries()
    present = kernel.index.ids()
    rows = kernel.store.versions_by_rowid(expected.values())
    held = kernel.index.get_metadata([e for e in expected if e in present])
    outdated = sum(1 for e, meta in held.items() if not same_metadata(meta, entry_metadata(rows[expected[e]])))
    return {"missing": len(expected.keys() - present), "extra": len(present - expected.keys()), "outdated": outdated}


_HALF_VERSION_QUERIES = (
    # a memory without any version
    "SELECT COUNT(*) FROM memories WHERE id NOT IN (SELECT memory_id FROM versions)",
    # versions not exactly 1..n (UNIQUE(memory_id, version) makes count = max and min = 1 sufficient)
    "SELECT COUNT(*) FROM (SELECT memory_id FROM versions GROUP BY memory_id HAVING MIN(version) != 1 "
    "OR COUNT(*) != MAX(version))",
    # the memory's current version is not its last one
    "SELECT COUNT(*) FROM memories m JOIN (SELECT memory_id, MAX(version) AS last FROM versions GROUP BY memory_id) v "
    "ON v.memory_id = m.id WHERE m.current_version != v.last",
    # the memory's state or kind is not its current version's
    "SELECT COUNT(*) FROM memories m JOIN versions v ON v.memory_id = m.id AND v.version = m.current_version "
    "WHERE m.state != v.state OR m.kind != v.kind",
    # an open version (valid until forever) that is not the current one, or a memory without exactly one
    "SELECT COUNT(*) FROM versions v JOIN memories m ON m.id = v.memory_id WHERE v.valid_to = :forever "
    "AND v.version != m.current_version",
    "SELECT COUNT(*) FROM memories m WHERE (SELECT COUNT(*) FROM versions v WHERE v.memory_id = m.id "
    "AND v.valid_to = :forever) != 1",
    # a migration that started and neither committed nor rolled back
    "SELECT COUNT(*) FROM migrations WHERE state = 'started'",
)


def half_versions(db_path: Path) -> int:
    """Violations of the version invariants, counted straight from the database file."""
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        return sum(int(db.execute(sql, {"forever": FOREVER}).fetchone()[0]) for sql in _HALF_VERSION_QUERIES)
