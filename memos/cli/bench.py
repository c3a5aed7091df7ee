"""``memos bench ...``: the benchmarks (each names its command and output in docs/)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_bench_load(args: argparse.Namespace) -> int:
    from memos.bench.load import run_load_bench

    result = run_load_bench(
        args.out, clients=tuple(int(c) for c in args.clients.split(",")), seconds=args.seconds, cubes=args.cubes,
        seed=args.seed, home=args.bench_home, preload=args.preload,
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


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("retrieval", help="LoCoMo recall@k: memos hybrid vs a dense baseline")
    from memos.bench import retrieval as retrieval_bench

    retrieval_bench.add_arguments(p)
    p.set_defaults(fn=retrieval_bench.main)
    p = bench.add_parser("scale", help="10k-100k memories: write_many ingest vs the embedder, search p50/p95/p99, Ray overhead")
    from memos.bench import scale as scale_bench

    scale_bench.add_arguments(p)
    p.set_defaults(fn=scale_bench.main)
    p = bench.add_parser("shards", help="aggregate write_many throughput at 1, 2, 4 kernel shard actors, ratio to 1")
    from memos.bench import shards as shards_bench

    shards_bench.add_arguments(p)
    p.set_defaults(fn=shards_bench.main)
    p = bench.add_parser("load", help="N concurrent clients through the Ray kernel; checks no acknowledged write is lost")
    p.add_argument("--clients", default="1,4,16,64", help="comma-separated client counts")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds per client count")
    p.add_argument("--cubes", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preload", type=int, default=0, help="memories written through write_many before the levels")
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
