"""``memos bench activation --compression ...``: what each KV-cache compression costs and keeps, on the served model.

For each memory length (``sizes``, tokens) a memory block is built from neutral filler sentences with nine invented
facts (door codes) placed early (10-20 %), in the middle (45-55 %) and late (80-90 %) in the block. Then, in one
process and one run:

- the reference: the block's uncompressed cache (``none``), whose greedy output is token-identical to a full
  prefill (checked here on the first ``repeats`` questions, and by the test suite);
- **cold prefill**: the whole prompt prefilled, ``repeats`` questions, interleaved with the injected runs of the
  same questions so that machine noise hits both alike;
- per method: bytes per token of the payload file (and the ratio to ``none``), time to compute it (the prefill, the
  attention scoring of the scored selections, the compression), time to load it from disk (sha256 and fingerprint
  checks included, median of ``repeats``), TTFT with it injected (median over the questions) and the speedup over
  the cold prefill's TTFT, and against the reference on every question: exact greedy match, mean fraction of tokens
  matched before the first divergence, answer agreement (the same code, or the same lack of one, as the
  reference) and answer accuracy (the right code), overall and per fact position.

Writes ``compression.json`` (settings, environment, every answer), ``compression.md`` (tables) and
``compression.png`` (payload size against answer agreement and greedy match) into ``out_dir``.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

from memos.bench.activation import _prefix_agreement, model_environment
from memos.cubes.activation import save_kv
from memos.models.general_text import LOCALITY_TEXT, REPLAY_TEXT
from memos.models.host import ModelHost, memory_messages
from memos.models.kv_compression import compress
from memos.progress import Progress
from memos.types import KVCompression

DEFAULT_METHODS = ("none", "int8", "k8v4", "k8v2", "int4", "int2", "sink_window@0.5", "heavy_hitter@0.5", "snapkv@0.5",
                   "int8+snapkv@0.75", "k8v4+sink_window@0.5")
_COLOURS = ("blue", "red", "green", "yellow", "white", "black", "orange", "purple", "grey")
_THINGS = ("locker", "safe", "gate", "door", "box", "vault", "cabinet", "drawer", "chest")
#: Where the nine facts sit in the block (fraction of the filler), and what the report calls each third.
_PLACES = (0.10, 0.15, 0.20, 0.45, 0.50, 0.55, 0.80, 0.85, 0.90)
_REGION = ("early",) * 3 + ("middle",) * 3 + ("late",) * 3
_NUMBER = re.compile(r"\d{3,}")


def fact_set() -> list[dict[str, str]]:
    """The nine facts: ``{"fact", "question", "answer", "region"}``, the same every run."""
    out = []
    for i, (colour, thing) in enumerate(zip(_COLOURS, _THINGS, strict=True)):
        code = str(4000 + (i * 739) % 5000)
        out.append({"fact": f"The code for the {colour} {thing} is {code}.",
                    "question": f"What is the code for the {colour} {thing}? Answer with the number.",
                    "answer": code, "region": _REGION[i]})
    return out


def memory_block(host: ModelHost, tokens: int) -> str:
    """Filler sentences with the facts of :func:`fact_set` at their places, about ``tokens`` tokens as a block."""
    filler = [*REPLAY_TEXT, *LOCALITY_TEXT]
    facts = [f["fact"] for f in fact_set()]
    budget = tokens - host.count_tokens(" ".join(facts))
    sentences: list[str] = []
    # Grow in steps of a few sentences (counting tokens of a long text is not free), then trim one by one.
    while host.memory_tokens([" ".join(sentences)]) < budget:
        sentences += [filler[(len(sentences) + j) % len(filler)] for j in range(8)]
    while len(sentences) > 1 and host.memory_tokens([" ".join(sentences)]) > budget:
        sentences.pop()
    n = len(sentences)
    for j, (fact, place) in enumerate(zip(facts, _PLACES, strict=True)):
        sentences.insert(int(place * n) + j, fact)
    return " ".join(sentences)


def run_compression_bench(host: ModelHost, out_dir: str | Path, sizes: tuple[int, ...], methods: tuple[str, ...],
                          repeats: int = 3, *, max_new_tokens: int = 16) -> dict[str, Any]:
    """Run the benchmark on ``host``; write JSON, markdown and PNG reports into ``out_dir``; return the JSON.

    Raises:
        ValueError: ``repeats < 1``, no sizes, or a malformed method (``KVCompression`` strings).
    """
    specs = {m: KVCompression.model_validate(m) for m in methods}
    if "none" not in specs:
        specs = {"none": KVCompression(), **specs}
    if repeats < 1 or not sizes:
        raise ValueError("need repeats >= 1 and at least one size")
    out = Path(out_dir)
    (out / "payloads").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "settings": {"sizes": list(sizes), "methods": [s.method for s in specs.values()], "repeats": repeats,
                     "max_new_tokens": max_new_tokens, "facts": fact_set()},
        "environment": model_environment(host),
        "sizes": [],
    }
    with Progress("activation: compression", total=len(sizes) * len(specs)) as bar:
        for i, size in enumerate(sizes):
            report["sizes"].append(_bench_size(host, out, size, specs, repeats, max_new_tokens,
                                               tick=lambda k, note, i=i: bar.update(i * len(specs) + k, note=note)))
            # Written after every size: a long run that is stopped keeps what it measured.
            report["environment"]["load_average_end"] = os.getloadavg()
            report["duration_s"] = time.perf_counter() - started
            (out / "compression.json").write_text(json.dumps(report, indent=2))
            (out / "compression.md").write_text(render_markdown(report))
            _plot(report, out / "compression.png")
    return report


def _bench_size(host: ModelHost, out: Path, size: int, specs: dict[str, KVCompression], repeats: int,
                max_new_tokens: int, tick: Any) -> dict[str, Any]:
    facts = fact_set()
    text = memory_block(host, size)
    questions = [[{"role": "user", "content": f["question"]}] for f in facts]
    # The costly half of a build, once per scoring family: the prefill (plus attention scores for H2O / SnapKV).
    prefills: dict[tuple[str, int], tuple[Any, Any, float]] = {}
    rows: dict[str, dict[str, Any]] = {}
    payloads: dict[str, Any] = {}
    for k, (name, spec) in enumerate(specs.items()):
        tick(k, f"{size} tokens: {name}")
        family = (spec.select if spec.select in ("heavy_hitter", "snapkv") else "none",
                  spec.observe if spec.select == "snapkv" else 0)
        if family not in prefills:
            t = time.perf_counter()
            full, scores = host.prefill_for(text, spec)
            prefills[family] = (full, scores, time.perf_counter() - t)
        full, scores, prefill_s = prefills[family]
        t = time.perf_counter()
        payload = compress(full, spec, scores)
        compress_s = time.perf_counter() - t
        ref = save_kv(payload, out / "payloads" / f"kv-{size}-{spec.method.replace('@', '_')}.safetensors")
        load_s = []
        for _ in range(repeats):
            t = time.perf_counter()
            payloads[name] = host.load_kv(ref)
            load_s.append(time.perf_counter() - t)
        rows[name] = {"method": spec.method, "memory_tokens": payload.num_tokens, "kept_tokens": payload.kept_tokens,
                      "file_bytes": ref.size_bytes, "bytes_per_token": ref.size_bytes / payload.num_tokens,
                      "build_s": prefill_s + compress_s, "compress_s": compress_s, "load_s": statistics.median(load_s)}
    # Warm-up (first calls pay allocator growth), then cold prefills interleaved with injected runs.
    host.generate(questions[0], kv=payloads["none"], max_new_tokens=2)
    host.generate(memory_messages([text]) + questions[0], max_new_tokens=2)
    cold = []
    answers: dict[str, list[Any]] = {name: [] for name in specs}
    for q, question in enumerate(questions):
        if q < repeats:
            cold.append(host.generate(memory_messages([text]) + question, max_new_tokens=max_new_tokens))
        for name in specs:
            answers[name].append(host.generate(question, kv=payloads[name], max_new_tokens=max_new_tokens))
    tick(len(specs), f"{size} tokens: done")
    cold_ttft = statistics.median(r.ttft_s for r in cold)
    reference = answers["none"]
    for name, got in answers.items():
        row = rows[name]
        row["bytes_ratio_vs_none"] = rows["none"]["file_bytes"] / row["file_bytes"]
        row["injected_ttft_s"] = statistics.median(r.ttft_s for r in got)
        row["ttft_speedup_vs_cold"] = cold_ttft / row["injected_ttft_s"]
        row["exact_match"] = statistics.mean(g.token_ids == r.token_ids for g, r in zip(got, reference, strict=True))
        row["prefix_agreement"] = statistics.mean(
            _prefix_agreement(g.token_ids, r.token_ids) for g, r in zip(got, reference, strict=True))
        row["answer_agreement"] = statistics.mean(
            _answer(g.text) == _answer(r.text) for g, r in zip(got, reference, strict=True))
        row["answer_accuracy"] = statistics.mean(f["answer"] in g.text for g, f in zip(got, facts, strict=True))
        row["accuracy_by_region"] = {
            region: statistics.mean(f["answer"] in g.text for g, f in zip(got, facts, strict=True)
                                    if f["region"] == region)
            for region in ("early", "middle", "late")}
        row["answers"] = [g.text for g in got]
    return {
        "target_tokens": size,
        "memory_tokens": rows["none"]["memory_tokens"],
        "cold_ttft_s": cold_ttft,
        "cold_ttft_samples_s": [r.ttft_s for r in cold],
        "none_equals_full_prefill": all(c.token_ids == r.token_ids for c, r in zip(cold, reference, strict=False)),
        "full_prefill_accuracy": statistics.mean(f["answer"] in c.text for c, f in zip(cold, facts, strict=False)),
        "methods": list(rows.values()),
    }


def _answer(text: str) -> str | None:
    found = _NUMBER.search(text)
    return found.group(0) if found else None


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark's tables as markdown."""
    env = report["environment"]
    s = report["settings"]
    lines = [
        f"Model `{env['fingerprint']['model_id']}`, dtype {env['fingerprint']['dtype']}, torch {env['torch']} on "
        f"{env['torch_threads']} threads ({env['cpus']} CPUs), load average {env['load_average_start'][0]:.1f} at "
        f"start and {env['load_average_end'][0]:.1f} at the end; 9 questions per length (3 facts early, 3 middle, "
        f"3 late), greedy, {s['max_new_tokens']} new tokens at most; reference: the uncompressed cache.",
    ]
    for size in report["sizes"]:
        lines += [
            "",
            f"**{size['memory_tokens']} memory tokens**: cold prefill TTFT {size['cold_ttft_s'] * 1e3:.0f} ms (median "
            f"of {len(size['cold_ttft_samples_s'])}); `none` equals the full prefill on those: "
            f"{'yes' if size['none_equals_full_prefill'] else 'NO'}.",
            "",
            "| method | kept tokens | bytes/token | smaller than none | build ms | load ms | injected TTFT ms "
            "| TTFT speedup vs cold | greedy exact | prefix agreement | answer agreement | answer accuracy "
            "| early / middle / late |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        for r in size["methods"]:
            region = r["accuracy_by_region"]
            lines.append(
                f"| {r['method']} | {r['kept_tokens']} | {r['bytes_per_token']:.0f} | {r['bytes_ratio_vs_none']:.1f}x "
                f"| {r['build_s'] * 1e3:.0f} | {r['load_s'] * 1e3:.1f} | {r['injected_ttft_s'] * 1e3:.0f} "
                f"| {r['ttft_speedup_vs_cold']:.1f}x | {r['exact_match']:.0%} | {r['prefix_agreement']:.2f} "
                f"| {r['answer_agreement']:.0%} | {r['answer_accuracy']:.0%} "
                f"| {region['early']:.0%} / {region['middle']:.0%} / {region['late']:.0%} |"
            )
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = "osD^v<>"
    for ax, metric, title in ((axes[0], "answer_agreement", "answer agreement with the full cache"),
                              (axes[1], "exact_match", "greedy output identical to the full cache")):
        for i, size in enumerate(report["sizes"]):
            for r in size["methods"]:
                ax.scatter(r["bytes_per_token"], r[metric], marker=markers[i % len(markers)], s=40)
                ax.annotate(r["method"], (r["bytes_per_token"], r[metric]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.scatter([], [], marker=markers[i % len(markers)], c="grey", label=f"{size['memory_tokens']} tokens")
        ax.set_xscale("log")
        ax.set_xlabel("payload bytes per memory token (log)")
        ax.set_ylabel("fraction of questions")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fp = report["environment"]["fingerprint"]
    fig.suptitle(f"KV-cache compression: size vs fidelity, {fp['model_id']} ({fp['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
