"""``memos bench activation``: what an activation MemCube buys, measured on the served model.

For memory blocks of about ``sizes`` tokens (synthetic facts, deterministic), in one process and one run:

- time to first token and total latency of a question asked after the memory, **cold** (the whole prompt is
  prefilled) and **injected** (the block's KV cache, saved to and loaded from disk, is used as prefix); median of
  ``repeats`` runs after one warm-up, the two paths interleaved so that machine noise hits both alike; and whether
  both paths produced the same greedy tokens in every run;
- bytes per cached token on disk, time to build the cache and to load it from disk (sha256 and fingerprint checks
  included);
- composition quality: a memory of ``compose_tokens`` tokens split into ``compose_parts`` blocks, each cached alone,
  joined with ``compose(method="rotate")`` and ``compose(method="recompute")``, and compared with a full prefill of
  the same prompt on questions about facts in every block: exact-match rate of the greedy outputs, mean fraction of
  reference tokens matched before the first divergence, and how often the answer names the right place.

Writes ``activation.json`` (settings, environment, every sample, summaries), ``activation.md`` (tables) and
``activation.png`` (TTFT and total latency against memory size) into ``out_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memos.cubes.activation import save_kv
from memos.models.host import ModelHost, memory_messages
from memos.progress import Progress

DEFAULT_SIZES = (256, 512, 1024, 2048)
COMPRESSION_SIZES = (512, 2048)
_PEOPLE = ("Mara Quill", "Tomas Reyk", "Ines Darrow", "Oskar Lind", "Priya Nand", "Hugo Vale", "Lena Sorrel",
           "Camil Brisk", "Noor Haddad", "Felix Ambry", "Yara Stone", "Dmitri Holt")
_OBJECTS = ("brass key", "red notebook", "silver compass", "old radio", "green umbrella", "wooden flute",
            "glass jar", "leather map", "blue kettle", "iron lantern", "paper kite", "copper coin")
_PLACES = ("lighthouse", "cellar", "greenhouse", "attic", "boathouse", "library", "garage", "bakery", "chapel",
           "workshop", "stable", "observatory")


def run_activation_bench(
    host: ModelHost,
    out_dir: str | Path,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    repeats: int = 5,
    *,
    max_new_tokens: int = 16,
    compose_tokens: int = 1024,
    compose_parts: int = 4,
    compose_questions: int = 12,
) -> dict[str, Any]:
    """Run the benchmark on ``host`` and write JSON, markdown and PNG reports into ``out_dir``; return the JSON.

    Raises:
        ValueError: ``repeats < 1``, no sizes, or ``compose_parts < 2``.
    """
    if repeats < 1 or not sizes or compose_parts < 2:
        raise ValueError("need repeats >= 1, at least one size and compose_parts >= 2")
    out = Path(out_dir)
    (out / "payloads").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "settings": {"sizes": list(sizes), "repeats": repeats, "max_new_tokens": max_new_tokens,
                     "compose_tokens": compose_tokens, "compose_parts": compose_parts,
                     "compose_questions": compose_questions},
        "environment": model_environment(host),
        "ttft": [],
    }
    # Progress on stderr: one unit per memory size, then one per composition question.
    with Progress("activation: ttft", total=len(sizes) + compose_questions) as bar:
        for i, size in enumerate(sizes):
            bar.update(i, note=f"{size} tokens")
            row = _bench_size(host, out, size, repeats, max_new_tokens)
            report["ttft"].append(row)
            bar.update(i + 1, note=f"{size} tokens: ttft {row['cold_ttft_s'] * 1e3:.0f} ms cold, "
                                   f"{row['injected_ttft_s'] * 1e3:.0f} ms injected")
        bar.update(len(sizes), label="activation: composition", note=f"{compose_parts} caches")
        report["composition"] = _bench_composition(
            host, compose_tokens, compose_parts, compose_questions,
            tick=lambda q: bar.update(len(sizes) + q, note=f"question {q}/{compose_questions}"),
        )
    report["environment"]["load_average_end"] = os.getloadavg()
    report["duration_s"] = time.perf_counter() - started
    (out / "activation.json").write_text(json.dumps(report, indent=2))
    (out / "activation.md").write_text(render_markdown(report))
    _plot(report, out / "activation.png")
    return report


def _facts(start: int, max_tokens: int, host: ModelHost) -> tuple[str, list[int]]:
    """Facts from number ``start`` on, as many as fit ``max_tokens`` memory-block tokens; returns (text, fact ids)."""
    lines: list[str] = []
    ids: list[int] = []
    i = start
    while True:
        candidate = "\n".join([*lines, _fact(i)])
        if host.memory_tokens([candidate]) > max_tokens and lines:
            return "\n".join(lines), ids
        lines.append(_fact(i))
        ids.append(i)
        i += 1


def _fact(i: int) -> str:
    person, obj, place = _triple(i)
    return f"{person} keeps the {obj} in the {place}."


def _triple(i: int) -> tuple[str, str, str]:
    # Distinct (person, object) pairs for i < 144; places shuffled so that no two neighbours share one.
    return _PEOPLE[i % 12], _OBJECTS[(i // 12) % 12], _PLACES[(5 * i + i // 12) % 12]


def _question(i: int) -> list[dict[str, str]]:
    person, obj, _ = _triple(i)
    return [{"role": "user", "content": f"Where does {person} keep the {obj}? Answer in one short sentence."}]


def _bench_size(host: ModelHost, out: Path, size: int, repeats: int, max_new_tokens: int) -> dict[str, Any]:
    text, fact_ids = _facts(0, size, host)
    question = _question(fact_ids[len(fact_ids) // 2])
    t = time.perf_counter()
    built = host.build_kv(text)
    build_s = time.perf_counter() - t
    ref = save_kv(built, out / "payloads" / f"kv-{size}.safetensors")
    load_s = []
    for _ in range(repeats):
        t = time.perf_counter()
        kv = host.load_kv(ref)
        load_s.append(time.perf_counter() - t)
    cold_prompt = memory_messages([text]) + question
    host.generate(cold_prompt, max_new_tokens=max_new_tokens)  # warm-up: first calls pay allocator growth
    host.generate(question, kv=kv, max_new_tokens=max_new_tokens)
    cold, injected = [], []
    for _ in range(repeats):
        cold.append(host.generate(cold_prompt, max_new_tokens=max_new_tokens))
        injected.append(host.generate(question, kv=kv, max_new_tokens=max_new_tokens))
    cold_ttft = statistics.median(r.ttft_s for r in cold)
    inj_ttft = statistics.median(r.ttft_s for r in injected)
    return {
        "target_tokens": size,
        "memory_tokens": built.num_tokens,
        "prompt_tokens": cold[0].prompt_tokens,
        "new_tokens": len(cold[0].token_ids),
        "cold_ttft_s": cold_ttft,
        "injected_ttft_s": inj_ttft,
        "ttft_speedup": cold_ttft / inj_ttft,
        "cold_total_s": statistics.median(r.total_s for r in cold),
        "injected_total_s": statistics.median(r.total_s for r in injected),
        "same_tokens": all(c.token_ids == i.token_ids for c, i in zip(cold, injected, strict=True)),
        "build_s": build_s,
        "file_bytes": ref.size_bytes,
        "bytes_per_token": ref.size_bytes / built.num_tokens,
        "load_s": statistics.median(load_s),
        "answer": cold[0].text,
        "samples": {
            "cold_ttft_s": [r.ttft_s for r in cold],
            "injected_ttft_s": [r.ttft_s for r in injected],
            "cold_total_s": [r.total_s for r in cold],
            "injected_total_s": [r.total_s for r in injected],
            "load_s": load_s,
        },
    }


def _bench_composition(host: ModelHost, total_tokens: int, parts: int, questions: int,
                       tick: Callable[[int], None] = lambda done: None) -> dict[str, Any]:
    blocks: list[str] = []
    block_facts: list[list[int]] = []
    start = 0
    for _ in range(parts):
        text, ids = _facts(start, total_tokens // parts, host)
        blocks.append(text)
        block_facts.append(ids)
        start = ids[-1] + 1
    t = time.perf_counter()
    payloads = [host.build_kv(b) for b in blocks]
    build_s = time.perf_counter() - t
    composed, compose_s = {}, {}
    for method in ("rotate", "recompute"):
        t = time.perf_counter()
        composed[method] = host.compose(payloads, method=method)
        compose_s[method] = time.perf_counter() - t
    # Questions spread over the blocks: fact k of block (q mod parts), k from the middle outwards.
    asked = [block_facts[q % parts][(len(block_facts[q % parts]) // 2 + q // parts) % len(block_facts[q % parts])]
             for q in range(questions)]
    rows = []
    for fact in asked:
        question = _question(fact)
        place = _triple(fact)[2]
        ref = host.generate(memory_messages(blocks) + question, max_new_tokens=24)
        row: dict[str, Any] = {"fact": fact, "place": place, "full_prefill": ref.text,
                               "full_prefill_correct": place in ref.text.lower()}
        for method, kv in composed.items():
            got = host.generate(question, kv=kv, max_new_tokens=24)
            row[method] = {
                "text": got.text,
                "exact": got.token_ids == ref.token_ids,
                "agreement": _prefix_agreement(got.token_ids, ref.token_ids),
                "correct": place in got.text.lower(),
                "ttft_s": got.ttft_s,
            }
        rows.append(row)
        tick(len(rows))
    summary = {
        method: {
            "exact_match_rate": statistics.mean(r[method]["exact"] for r in rows),
            "mean_prefix_agreement": statistics.mean(r[method]["agreement"] for r in rows),
            "answer_accuracy": statistics.mean(r[method]["correct"] for r in rows),
            "compose_s": compose_s[method],
            "median_ttft_s": statistics.median(r[method]["ttft_s"] for r in rows),
        }
        for method in composed
    }
    return {
        "memory_tokens": composed["recompute"].num_tokens,
        "block_tokens": [p.num_tokens for p in payloads],
        "build_blocks_s": build_s,
        "full_prefill_accuracy": statistics.mean(r["full_prefill_correct"] for r in rows),
        "methods": summary,
        "questions": rows,
    }


def _prefix_agreement(got: tuple[int, ...], ref: tuple[int, ...]) -> float:
    """Fraction of ``ref``'s tokens that ``got`` matches before the first divergence (1.0: identical)."""
    if not ref:
        return 1.0 if not got else 0.0
    n = 0
    for a, b in zip(got, ref, strict=False):
        if a != b:
            break
        n += 1
    return n / max(len(ref), len(got))


def model_environment(host: ModelHost) -> dict[str, Any]:
    """What a model bench ran on (model fingerprint, torch, threads, machine, load at start); benches share it."""
    import torch

    return {
        "fingerprint": host.fingerprint.model_dump(),
        "model_source": str(host.loaded.source),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        # OpenMP's wait (memos.models sets both unless the environment does): training time depends on them.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "load_average_start": os.getloadavg(),
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark's tables as markdown."""
    env = report["environment"]
    lines = [
        f"Model `{env['fingerprint']['model_id']}`, dtype {env['fingerprint']['dtype']}, torch {env['torch']} on "
        f"{env['torch_threads']} threads ({env['cpus']} CPUs); median of {report['settings']['repeats']} runs, "
        f"{report['settings']['max_new_tokens']} new tokens at most.",
        "",
        "| memory tokens | cold TTFT ms | injected TTFT ms | TTFT speedup | cold total ms | injected total ms "
        "| same tokens | bytes/token | file MiB | load ms | build ms |",
        "|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    ]
    for r in report["ttft"]:
        lines.append(
            f"| {r['memory_tokens']} | {r['cold_ttft_s'] * 1e3:.0f} | {r['injected_ttft_s'] * 1e3:.0f} "
            f"| {r['ttft_speedup']:.1f}x | {r['cold_total_s'] * 1e3:.0f} | {r['injected_total_s'] * 1e3:.0f} "
            f"| {'yes' if r['same_tokens'] else 'NO'} | {r['bytes_per_token']:.0f} | {r['file_bytes'] / 2**20:.1f} "
            f"| {r['load_s'] * 1e3:.1f} | {r['build_s'] * 1e3:.0f} |"
        )
    comp = report["composition"]
    lines += [
        "",
        f"Composition of {len(comp['block_tokens'])} blocks ({comp['memory_tokens']} tokens) against a full prefill "
        f"of the same prompt, {len(comp['questions'])} questions, greedy, 24 new tokens at most. Full-prefill answer "
        f"accuracy: {comp['full_prefill_accuracy']:.0%}.",
        "",
        "| method | exact-match rate | mean prefix agreement | answer accuracy | compose ms | median TTFT ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, s in comp["methods"].items():
        lines.append(
            f"| {method} | {s['exact_match_rate']:.0%} | {s['mean_prefix_agreement']:.2f} | {s['answer_accuracy']:.0%} "
            f"| {s['compose_s'] * 1e3:.0f} | {s['median_ttft_s'] * 1e3:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["ttft"]
    x = [r["memory_tokens"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, title in ((axes[0], "ttft_s", "time to first token"), (axes[1], "total_s", "total latency")):
        ax.plot(x, [r[f"cold_{metric}"] * 1e3 for r in rows], "o-", label="cold prefill")
        ax.plot(x, [r[f"injected_{metric}"] * 1e3 for r in rows], "s-", label="injected KV cache")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("memory tokens")
        ax.set_ylabel("ms (median)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fp = report["environment"]["fingerprint"]
    fig.suptitle(f"{fp['model_id']} ({fp['dtype']}), {report['environment']['torch_threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``memos bench activation``."""
    parser.add_argument("--out", default="bench-results/activation", help="output directory")
    parser.add_argument("--model", default="smollm2", help="'smollm2', a .gguf file or a local HF model directory")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16", "float16"),
                        help="auto: float32 on the CPU, bfloat16 (or float16) on a GPU")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:<n>")
    parser.add_argument("--cache-dir", default=None, help="converted-model cache (default: $MEMOS_MODEL_CACHE or ~/.cache/memos/models)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable core)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help=f"memory sizes in tokens (default {' '.join(map(str, DEFAULT_SIZES))}; with --compression "
                             f"{' '.join(map(str, COMPRESSION_SIZES))})")
    parser.add_argument("--repeats", type=int, default=None, help="runs per median (default 5; with --compression 3)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="with --compression: tokens per answer")
    parser.add_argument("--compression", nargs="*", default=None, metavar="METHOD",
                        help="benchmark KV-cache compression instead: methods such as none int8 snapkv@0.5 "
                             "int8+sink_window@0.5 (no METHOD: the default set); writes compression.json/md/png")


def main(args: argparse.Namespace) -> int:
    """Load the model named by ``args`` and run the benchmark; print the markdown tables."""
    from memos.config import default_model_cache
    from memos.models.loader import ModelSpec

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_model_cache()
    host = ModelHost(ModelSpec(model=args.model, dtype=args.dtype, cache_dir=cache_dir, num_threads=args.threads,
                               device=args.device))
    if args.compression is not None:
        from memos.bench import kv_compression

        methods = tuple(args.compression) or kv_compression.DEFAULT_METHODS
        report = kv_compression.run_compression_bench(host, args.out, tuple(args.sizes or COMPRESSION_SIZES),
                                                      methods, args.repeats or 3, max_new_tokens=args.max_new_tokens)
        print(kv_compression.render_markdown(report), end="")
        print(f"wrote {Path(args.out) / 'compression.json'}, compression.md, compression.png")
        return 0
    report = run_activation_bench(host, args.out, tuple(args.sizes or DEFAULT_SIZES), args.repeats or 5)
    print(render_markdown(report), end="")
    print(f"wrote {Path(args.out) / 'activation.json'}, activation.md, activation.png")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m memos.bench.activation", description=__doc__.split("\n")[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
