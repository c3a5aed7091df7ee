"""``memos bench shards``: aggregate ``write_many`` throughput of the kernel as 1, 2, 4 ... shard actors on Ray, as a
ratio to one shard in the same run.

For each shard count S, a fresh sharded data dir (SQLite ``synchronous=FULL``, embedded Chroma per shard, the
MiniLM embedder, no model host) behind a private local Ray (``start_embedded(shards=S)``). The work is the same in
every run: ``cubes`` cubes (cube i placed on shard i mod S), ``memories`` texts split evenly over them, written
through the router with ``write_many`` chunks of ``batch`` by one client thread per cube, so the client's
concurrency does not change with S; only how many kernels share it. Each shard is warmed (its embedder loaded) by
one write before the clock starts. The counts run in rounds of alternating order (1 2 4, then 4 2 1, ...), so load
that drifts during the run weighs on every count alike. Reported: each count's median memories/s and its ratio to
S=1, and the embedder alone on the first texts, timed in this process at each round's start (the machine's limit for
one embedding process). Writes ``shards.json`` and ``shards.md``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from memos.bench.metrics import machine_at_end, write_report
from memos.bench.scale import corpus, embedder_alone

PRINCIPAL = "bench:shards"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(shards: int, texts: list[str], cubes: int, batch: int, home: Path, embedder: str) -> dict[str, Any]:
    from memos.client import Memos
    from memos.config import Settings
    from memos.hosting.ray_host import start_embedded
    from memos.storage.placement import Placement

    settings = Settings(home=home, model=None, embedder=embedder, metrics_export_port=_free_port())
    table = Placement.create(home, shards)
    names = [f"bench/cube-{i}" for i in range(cubes)]
    for i, name in enumerate(names):
        table.place(name, i % shards)
    host = start_embedded(settings, dashboard=False, shards=shards)
    try:
        mem = Memos(host.transport, PRINCIPAL)
        for name in names:
            mem.create_cube(name)
            mem.write(name, f"warm-up of {name}")  # loads the shard's embedder before the clock starts
        per_cube = [texts[i::cubes] for i in range(cubes)]
        failures: list[str] = []

        def work(cube: str, mine: list[str]) -> None:
            for i in range(0, len(mine), batch):
                result = mem.write_many(mine[i : i + batch], cube=cube)
                if result.failed:
                    failures.append(str(next(o.error for o in result.results if o.error)))
                    return

        threads = [threading.Thread(target=work, args=(n, m), name=f"bench-{n}") for n, m in zip(names, per_cube,
                                                                                                strict=True)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"write_many refused an item: {failures[0]}")
        written = mem.stats().memories.get("plaintext", {}).get("active", 0) - cubes
    finally:
        host.shutdown()
    if written != len(texts):
        raise RuntimeError(f"{written} memories found after writing {len(texts)}")
    return {"shards": shards, "memories": len(texts), "seconds": round(elapsed, 2),
            "memories_per_s": round(len(texts) / elapsed, 1)}


def run_shards_bench(args: argparse.Namespace) -> dict[str, Any]:
    counts = sorted(set(args.shards))
    if (not counts or counts[0] < 1 or args.cubes < counts[-1] or args.batch < 1 or args.memories < args.cubes
            or args.repeats < 1):
        raise ValueError("shard counts and repeats must be >= 1, --cubes at least the largest count, --memories at "
                         "least --cubes")
    texts = corpus(args.memories, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Rounds in alternating order (1 2 4, then 4 2 1, ...), so a machine whose load drifts during the run weighs on
    # every count alike; each count reports its median round. The embedder alone is timed at each round's start.
    embed_rates: list[float] = []
    rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for r in range(args.repeats):
        if args.embedder == "all-MiniLM-L6-v2":
            embed_rates.append(embedder_alone(texts[: args.embed_sample], args.batch))
        for n in counts if r % 2 == 0 else counts[::-1]:
            scratch = Path(tempfile.mkdtemp(prefix="memos-shards-", dir=args.scratch))
            try:
                rounds[n].append(_run(n, texts, args.cubes, args.batch, scratch / "home", args.embedder))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            print(f"round {r + 1}: {n} shard(s): {rounds[n][-1]['memories_per_s']} memories/s", flush=True)
    embed_rate = statistics.median(embed_rates) if embed_rates else None
    runs = []
    for n in counts:
        rates = [x["memories_per_s"] for x in rounds[n]]
        runs.append({"shards": n, "memories": len(texts), "memories_per_s": round(statistics.median(rates), 1),
                     "rounds_memories_per_s": [x["memories_per_s"] for x in rounds[n]]})
    base = next((r["memories_per_s"] for r in runs if r["shards"] == 1), runs[0]["memories_per_s"])
    for r in runs:
        r["ratio_to_1_shard"] = round(r["memories_per_s"] / base, 3)
        r["ratio_to_embedder_alone"] = round(r["memories_per_s"] / embed_rate, 3) if embed_rate else None
    report = {
        "settings": {"memories": args.memories, "cubes": args.cubes, "batch": args.batch, "seed": args.seed,
                     "repeats": args.repeats, "embedder": args.embedder, "sqlite_synchronous": "FULL", "index": "embedded Chroma per shard"},
        "environment": machine_at_end(),
        "embedder_alone_texts_per_s": round(embed_rate, 1) if embed_rate else None,
        "embedder_alone_rounds": [round(x, 1) for x in embed_rates],
        "runs": runs,
    }
    write_report(out, "shards", report, render_markdown)
    return report


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# memos bench shards", "",
        f"{s['memories']} invented facts over {s['cubes']} cubes, write_many chunks of {s['batch']}, one client "
        f"thread per cube; {s['embedder']}, SQLite {s['sqlite_synchronous']}, {s['index']}; "
        f"{report['environment']['cpus']} CPUs, load average at the end {report['environment']['load_average_end']}. "
        f"Embedder alone in one process (median of each round's start): {report['embedder_alone_texts_per_s']} "
        f"texts/s {report['embedder_alone_rounds']}; {s['repeats']} rounds in alternating order.", "",
        "| shards | memories/s (median) | each round | ratio to 1 shard | ratio to the embedder alone |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['shards']} | {r['memories_per_s']} | {r['rounds_memories_per_s']} | {r['ratio_to_1_shard']} | "
              f"{r['ratio_to_embedder_alone']} |" for r in report["runs"]]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4], help="shard counts to measure")
    p.add_argument("--memories", type=int, default=4000, help="memories written per run")
    p.add_argument("--cubes", type=int, default=4, help="cubes (one client thread each), at least the largest count")
    p.add_argument("--batch", type=int, default=250, help="items per write_many")
    p.add_argument("--repeats", type=int, default=2, help="rounds, in alternating order; each count's median")
    p.add_argument("--embed-sample", dest="embed_sample", type=int, default=2000,
                   help="texts the embedder alone is timed on at each round's start")
    p.add_argument("--embedder", default="all-MiniLM-L6-v2", choices=["all-MiniLM-L6-v2", "hashing"],
                   help="hashing: no model, to check the mechanics quickly (the ratios then measure no embedding)")
    p.add_argument("--scratch", help="where the data dirs go (default: the system's temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results/shards")


def main(args: argparse.Namespace) -> int:
    report = run_shards_bench(args)
    print(render_markdown(report))
    return 0
