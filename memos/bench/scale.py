"""``memos bench scale``: ingest and search at 10k-100k memories in one cube, as ratios to limits measured in the
same run.

For each size N (nested corpora: the first 10k texts of the 100k run are the 10k run's texts):
1. **embedder alone**: a fresh MiniLM embedder (no cache) embeds the first ``min(N, embed_sample)`` texts in chunks
   of ``batch`` (the chunking ``write_many`` gets): the machine's limit for ingest, texts/s;
2. **ingest**: a fresh data dir (SQLite ``synchronous=FULL``, embedded Chroma, the same embedder model, a fresh
   instance) gets all N texts through ``write_many`` in chunks of ``batch``, from ``writers`` client threads (two by
   default, so one chunk commits while the previous one is embedded); reported as memories/s and as the ratio to (1);
3. **search in-process**: ``queries`` distinct queries per mode (hybrid, dense, lexical), k=10, through the
   in-process client; p50/p95/p99 in ms. Queries are word windows cut from random memories and differ across modes
   and transports, so no query embedding comes from the cache;
4. **search through Ray**: the same data dir behind the kernel actor (a private local Ray), fresh queries;
   the Ray overhead is the p50 of a ``read`` of one memory through Ray minus its in-process p50;
5. **parts of a search** (``search_stages``): the query embedding (the floor; the report divides hybrid p95 by
   its p50), the index probe, its SQLite check and the lexical query, each alone, with three same-loop baselines;
6. **hybrid before and after** (``hybrid_before_after``): hybrid search as it is and with its lexical leg in turn
   after the embedding and without pruning (how it was), one query of each in turn.

With ``--keep DIR`` each size's cube lives in ``DIR/<size>/`` and is built once: later runs skip (1) and (2), report
the build's ingest figures, and search the same cube.

Texts: with ``--data`` a LoCoMo file's turns (``[date] speaker: text``), repeated with a distinct numbered prefix
until N; otherwise invented facts (``memos.bench.synthetic_facts``). Writes ``scale.json`` and ``scale.md``.
The machine is what it is: run it alone (``flock``) and read the ratios, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memos.bench.metrics import machine_at_end, percentile, write_report
from memos.progress import Progress

CUBE = "bench/scale"
PRINCIPAL = "bench:scale"
MODES = ("hybrid", "dense", "lexical")
DEFAULT_SIZES = (10_000, 100_000)


def corpus(n: int, data: str | Path | None = None, seed: int = 0) -> list[str]:
    """``n`` distinct texts; the first ``k`` of ``corpus(n)`` are ``corpus(k)``."""
    if data is None:
        from memos.bench.synthetic_facts import synthetic_facts

        return [text for _, text in synthetic_facts(n, seed)]
    from memos.bench.locomo import load_locomo
    from memos.bench.retrieval import turn_content

    turns = [turn_content(s, t) for c in load_locomo(data) for s, t in c.turns()]
    if not turns:
        raise ValueError(f"{data}: no conversation turns")
    return [turns[i] if i < len(turns) else f"(note {i // len(turns)}) {turns[i % len(turns)]}" for i in range(n)]


def queries(texts: Sequence[str], n: int, rng: random.Random, seen: set[str] | None = None) -> list[str]:
    """``n`` distinct queries: windows of 4-9 words cut from random texts.

    ``seen`` (shared by every timed part of one size) keeps each query new to the whole run: the embedder caches
    query vectors, and a query timed twice would time the cache, not the search (small templated corpora repeat
    windows often)."""
    seen = set() if seen is None else seen
    out: dict[str, None] = {}
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise ValueError(f"the corpus has too few distinct 4-9 word windows for {n} new queries")
        words = rng.choice(texts).split()
        width = min(len(words), rng.randint(4, 9))
        start = rng.randint(0, max(0, len(words) - width))
        q = " ".join(words[start : start + width])
        if q not in seen:
            seen.add(q)
            out.setdefault(q, None)
    return list(out)


def _corpus_name(args: argparse.Namespace) -> str:
    return f"{args.data or 'synthetic facts'} (seed {args.seed})"


def _ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {q: round(percentile(ms, p), 2) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}


def _timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def embedder_alone(texts: Sequence[str], batch: int) -> float:
    """Texts per second of a fresh MiniLM embedder (model loaded before the clock starts)."""
    from memos.models.embedder import MiniLMEmbedder

    embedder = MiniLMEmbedder(cache_size=1)
    embedder.embed(["warm-up"])
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.embed(list(texts[i : i + batch]))
    return len(texts) / (time.perf_counter() - started)


def ingest(mem: Any, texts: Sequence[str], batch: int, writers: int, tick: Callable[[int], None]) -> float:
    """Write ``texts`` through ``write_many`` from ``writers`` threads; returns memories per second.

    Raises:
        RuntimeError: an item was refused (the bench writes only valid items).
    """
    chunks = [list(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    lock = threading.Lock()
    failures: list[str] = []

    def work() -> None:
        while True:
            with lock:
                if not chunks or failures:
                    return
                chunk = chunks.pop(0)
            result = mem.write_many(chunk, cube=CUBE)
            if result.failed:
                failures.append(str(next(o.error for o in result.results if o.error)))
            tick(len(chunk))

    started = time.perf_counter()
    threads = [threading.Thread(target=work, name=f"bench-writer-{i}") for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"write_many refused an item: {failures[0]}")
    return len(texts) / (time.perf_counter() - started)


def search_latencies(mem: Any, qs: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    out = {}
    for mode in MODES:
        it = iter(qs[mode])
        out[mode] = _ms(_timed(lambda it=it, mode=mode: mem.search(next(it), CUBE, k=10, mode=mode), len(qs[mode])))
    return out


def hybrid_before_after(mem: Any, kernel: Any, new: list[str], old: list[str]) -> dict[str, dict[str, float]]:
    """Hybrid search as it is (``after``: lexical leg run while the query is embedded, common words pruned) and as
    it was (``before``: both legs one after the other, no pruning), one query of each in turn, distinct queries."""
    times: dict[str, list[float]] = {"after": [], "before": []}
    for q_new, q_old in zip(new, old, strict=True):
        times["after"] += _timed(lambda q=q_new: mem.search(q, CUBE, k=10, mode="hybrid"), 1)
        kernel.lexical_ahead, kernel.store.lexical_pruning = False, False
        try:
            times["before"] += _timed(lambda q=q_old: mem.search(q, CUBE, k=10, mode="hybrid"), 1)
        finally:
            kernel.lexical_ahead, kernel.store.lexical_pruning = True, True
    return {k: _ms(v) for k, v in times.items()}


def search_stages(kernel: Any, qs: list[str], limit: int = 50) -> dict[str, dict[str, float]]:
    """The parts of one hybrid search, each timed alone on distinct (uncached) queries: the query's embedding (the
    floor of dense and hybrid search), the unfiltered index probe, its check against SQLite, and the lexical query.
    Three baselines in the same loop: the embedding with the process's torch threads (``query_threads=None``, how
    queries were embedded before), the lexical query ranking every match (``probe=False``) and the probe without
    pruning of common words (``lexical_pruning=False``)."""
    from memos.kernel.ops.search import PROBE_FACTOR
    from memos.storage.vector import parse_entry_id

    embedder = kernel.embedder
    threads = getattr(embedder, "query_threads", None)
    parts: dict[str, list[float]] = {k: [] for k in (
        "query_embedding", "query_embedding_process_threads", "index_probe", "probe_check", "lexical_query",
        "lexical_query_unpruned", "lexical_query_full")}
    for i, q in enumerate(qs):
        t0 = time.perf_counter()
        vec = embedder.embed([q])[0]
        t1 = time.perf_counter()
        found = kernel.index.nearest(vec, PROBE_FACTOR * limit)
        t2 = time.perf_counter()
        kernel.store.rowids_of((parse_entry_id(eid) for eid, _ in found), cubes=(CUBE,))
        t3 = time.perf_counter()
        kernel.store.lexical(q, (CUBE,), None, limit)
        t4 = time.perf_counter()
        kernel.store.lexical(q, (CUBE,), None, limit, probe=False)
        t5 = time.perf_counter()
        kernel.store.lexical_pruning = False
        try:
            kernel.store.lexical(q, (CUBE,), None, limit)
        finally:
            kernel.store.lexical_pruning = True
        parts["lexical_query_unpruned"].append(time.perf_counter() - t5)
        parts["query_embedding"].append(t1 - t0)
        parts["index_probe"].append(t2 - t1)
        parts["probe_check"].append(t3 - t2)
        parts["lexical_query"].append(t4 - t3)
        parts["lexical_query_full"].append(t5 - t4)
        if threads is not None:  # the same embedding with the process's torch threads (the setting before)
            embedder.query_threads = None
            try:
                t6 = time.perf_counter()
                embedder.embed([f"{q} ({i})"])
                parts["query_embedding_process_threads"].append(time.perf_counter() - t6)
            finally:
                embedder.query_threads = threads
    return {k: _ms(v) for k, v in parts.items() if v}


def _size_run(n: int, texts: list[str], home: Path, args: argparse.Namespace, rng: random.Random,
              bar: Progress, done: list[int]) -> dict[str, Any]:
    from memos.client import Memos
    from memos.config import Settings
    from memos.kernel.factory import open_kernel
    from memos.service import KernelService
    from memos.transports import InProcessTransport

    def tick(k: int) -> None:
        done[0] += k
        bar.update(done[0], note=f"{n}: ingest")

    used: set[str] = set()  # every timed query of this size is new to the embedder's cache
    built_file = home.parent / "built.json"
    built = json.loads(built_file.read_text(encoding="utf-8")) if built_file.exists() else None
    if built is not None and (built.get("memories") != n or built.get("corpus") != _corpus_name(args)):
        raise ValueError(f"{home.parent} holds a cube of {built.get('memories')} memories of {built.get('corpus')}, "
                         f"not {n} of {_corpus_name(args)}: give another --keep directory")
    settings = Settings(home=home, model=None)
    if built is None:
        sample = texts[: min(n, args.embed_sample)]
        bar.update(done[0], note=f"{n}: embedder alone on {len(sample)} texts")
        embed_rate = embedder_alone(sample, args.batch)
    kernel = open_kernel(settings)
    mem = Memos(InProcessTransport(KernelService(kernel)), PRINCIPAL)
    try:
        if built is None:
            mem.create_cube(CUBE)
            mem.search("warm-up", CUBE)
            rate = ingest(mem, texts, args.batch, args.writers, tick)
            built = {"memories": n, "corpus": _corpus_name(args), "embedder_alone_texts_per_s": round(embed_rate, 1),
                     "embedder_sample": len(sample), "ingest_memories_per_s": round(rate, 1),
                     "ingest_ratio_to_embedder": round(rate / embed_rate, 3)}
            if args.keep:
                built_file.write_text(json.dumps(built, indent=2) + "\n", encoding="utf-8")
        else:
            done[0] += n
            bar.update(done[0], note=f"{n}: reusing the cube built in {home.parent}")
            mem.search("warm-up", CUBE)
        # Cold queries: the ingest left up to 4096 texts' vectors in the embedder's cache, and on a small corpus a
        # query window is often a whole text (a cache hit would time a dict lookup, not a search).
        getattr(kernel.embedder, "clear_cache", lambda: None)()
        qs = {mode: queries(texts, args.queries, rng, used) for mode in MODES}
        bar.update(done[0], note=f"{n}: searching in-process")
        local = search_latencies(mem, qs)
        bar.update(done[0], note=f"{n}: timing the parts of a search")
        stages = search_stages(kernel, queries(texts, args.queries, rng, used))
        bar.update(done[0], note=f"{n}: hybrid search before and after, in turn")
        pair = queries(texts, 2 * args.queries, rng, used)
        hybrid_pair = hybrid_before_after(mem, kernel, pair[::2], pair[1::2])
        some = mem.list(CUBE, limit=1)[0].id
        read_local = _timed(lambda: mem.read(some), args.queries)
    finally:
        mem.close()
    result: dict[str, Any] = {
        **{k: v for k, v in built.items() if k != "corpus"},
        "search_ms": {"in_process": local},
        "stages_ms": stages,
        "hybrid_before_after_ms": hybrid_pair,
        "hybrid_p95_to_embedding_p50": round(local["hybrid"]["p95"] / max(stages["query_embedding"]["p50"], 1e-3), 2),
        "read_ms": {"in_process": _ms(read_local)},
    }
    if args.ray:
        from memos.hosting.ray_host import _free_port, start_embedded

        bar.update(done[0], note=f"{n}: starting the Ray kernel actor")
        ray_settings = Settings(home=home, model=None, dashboard_port=_free_port(), metrics_export_port=_free_port())
        host = start_embedded(ray_settings, dashboard=False)
        try:
            remote = Memos(host.transport, PRINCIPAL)
            remote.search("warm-up", CUBE)
            qs = {mode: queries(texts, args.queries, rng, used) for mode in MODES}
            bar.update(done[0], note=f"{n}: searching through Ray")
            result["search_ms"]["ray"] = search_latencies(remote, qs)
            read_ray = _timed(lambda: remote.read(some), args.queries)
        finally:
            host.shutdown()
        result["read_ms"]["ray"] = _ms(read_ray)
        result["ray_overhead_p50_ms"] = round(result["read_ms"]["ray"]["p50"] - result["read_ms"]["in_process"]["p50"], 3)
    return result


def run_scale_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run every size; write ``scale.json`` and ``scale.md`` into ``args.out``; return the report."""
    sizes = sorted(set(args.sizes))
    if not sizes or sizes[0] < 1 or args.batch < 1 or args.queries < 1 or args.writers < 1:
        raise ValueError("sizes, batch, queries and writers must be at least 1")
    started = time.perf_counter()
    texts = corpus(sizes[-1], args.data, args.seed)
    rng = random.Random(args.seed)
    runs: list[dict[str, Any]] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {}
    with Progress("scale", total=sum(sizes)) as bar:
        done = [0]
        for n in sizes:
            if args.keep:  # a persistent cube per size: built once, searched by every later run
                scratch = Path(args.keep) / str(n)
                runs.append(_size_run(n, texts[:n], scratch / "home", args, rng, bar, done))
            else:
                scratch = Path(tempfile.mkdtemp(prefix="memos-scale-", dir=args.scratch))
                try:
                    runs.append(_size_run(n, texts[:n], scratch / "home", args, rng, bar, done))
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            report = {  # written after each size, so a long run that is stopped keeps what it measured
                "settings": {"sizes": sizes, "batch": args.batch, "writers": args.writers, "queries": args.queries,
                             "embed_sample": args.embed_sample,
                             "data": str(args.data) if args.data else "synthetic facts", "seed": args.seed, "k": 10,
                             "sqlite_synchronous": "FULL", "index": "embedded Chroma"},
                "environment": machine_at_end(),
                "runs": runs,
                "duration_s": round(time.perf_counter() - started, 1),
            }
            write_report(out, "scale", report, render_markdown)
    return report


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# memos bench scale", "",
        f"{s['data']}; write_many chunks of {s['batch']} from {s['writers']} writer threads; "
        f"{s['queries']} distinct queries per mode and transport, k={s['k']}; SQLite {s['sqlite_synchronous']}, "
        f"{s['index']}; {report['environment']['cpus']} CPUs, load average at the end "
        f"{report['environment']['load_average_end']}.", "",
        "| memories | embedder alone (texts/s) | ingest (memories/s) | ratio | Ray overhead p50 (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(f"| {r['memories']} | {r['embedder_alone_texts_per_s']} (on {r['embedder_sample']}) | "
                     f"{r['ingest_memories_per_s']} | {r['ingest_ratio_to_embedder']} | "
                     f"{r.get('ray_overhead_p50_ms', 'n/a')} |")
    lines += ["", "| memories | part of a search (timed alone) | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|"]
    for r in report["runs"]:
        for part, p in r.get("stages_ms", {}).items():
            lines.append(f"| {r['memories']} | {part} | {p['p50']} | {p['p95']} | {p['p99']} |")
        for when, p in r.get("hybrid_before_after_ms", {}).items():
            lines.append(f"| {r['memories']} | hybrid search {when} (in turn) | {p['p50']} | {p['p95']} | {p['p99']} |")
        if "hybrid_p95_to_embedding_p50" in r:
            lines.append(f"| {r['memories']} | hybrid p95 / query embedding p50 | {r['hybrid_p95_to_embedding_p50']} | | |")
    lines += ["", "| memories | transport | mode | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        for transport, modes in r["search_ms"].items():
            for mode, p in modes.items():
                lines.append(f"| {r['memories']} | {transport} | {mode} | {p['p50']} | {p['p95']} | {p['p99']} |")
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="cube sizes (memories)")
    p.add_argument("--data", help="a LoCoMo JSON file whose turns become the texts (default: invented facts)")
    p.add_argument("--batch", type=int, default=1000, help="items per write_many (at most 1000)")
    p.add_argument("--writers", type=int, default=2, help="client threads calling write_many")
    p.add_argument("--queries", type=int, default=200, help="queries per mode and transport")
    p.add_argument("--embed-sample", dest="embed_sample", type=int, default=10_000,
                   help="texts the embedder alone is timed on (the first ones of the corpus)")
    p.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray transport")
    p.add_argument("--scratch", help="where the data dirs go (default: the system's temp dir)")
    p.add_argument("--keep", help="a directory that keeps each size's cube (KEEP/<size>/): built on the first run, "
                                  "reused (no ingest; the build's ingest figures are reported) by later runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results/scale")


def main(args: argparse.Namespace) -> int:
    report = run_scale_bench(args)
    print(render_markdown(report))
    return 0
