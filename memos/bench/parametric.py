"""``memos bench parametric``: what a parametric MemCube (a distilled LoRA adapter) buys and costs, on the served model.

For each size in ``sizes``, the first ``size`` invented facts of one seeded list (``memos.bench.synthetic_facts``:
people, towns and numbers no model can know) are distilled into one adapter with ``memos.models.distill.distill``,
and the bench records what distillation measured itself (its evaluation is the one stored in every adapter's header):

- closed-book recall with the adapter and without it (greedy, answer key in the reply), on the trained question
  phrasings and on held-out phrasings;
- locality: the base model's mean token loss on held-out general text with and without the adapter;
- training time (wall and process CPU), steps, examples, adapter parameters and bytes on disk.

With ``compare_legacy`` every size is also distilled with the recipe before 2026-12 (``LEGACY_RECIPE``), in
the same run, so the two recipes' times can be compared as a ratio on the same (shared) machine. With ``context``
(the default) every size is also distilled with ``teacher="context"`` (context distillation: the model with each
memory's cached block in front is the teacher), so text-trained and context-distilled adapters are compared on the
same facts in the same run.

For each size, the context savings of the default adapter: each fact's trained question asked through
``memos.models.adapters.generate_with_adapter`` (the serving path) with the adapter standing in for its sources
(a memory-free prompt), and asked with the sources as memory blocks in front instead (their KV cache, as
``assemble_context`` would inject them, no adapter): prompt tokens and answer accuracy (greedy, answer key in the
reply) for both.

Then, once, serving costs on the largest adapter: applying and removing it (``memos.models.adapters``, forward
hooks) against peft's ``set_adapter`` on a peft-wrapped copy, and greedy decoding speed without an adapter, with
the hooks and with peft's LoRA layers.

Writes ``parametric.json`` (settings, environment, every row), ``parametric.md`` (tables) and ``parametric.png``
into ``out_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from memos.bench.activation import model_environment
from memos.bench.synthetic_facts import synthetic_facts
from memos.cubes.parametric import AdapterPayload, save_adapter
from memos.models.adapter_costs import measure_serving_costs
from memos.models.distill import LEGACY_RECIPE, DistillProgress, LoraConfig, SourceFact, distill
from memos.models.host import ModelHost
from memos.progress import Progress

DEFAULT_SIZES = (20, 50, 100)


def run_parametric_bench(
    out_dir: str | Path,
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    *,
    host: ModelHost,
    config: LoraConfig | None = None,
    seed: int = 0,
    serving_repeats: int = 3,
    compare_legacy: bool = False,
    legacy_sizes: tuple[int, ...] | None = None,
    extra_recipes: dict[str, LoraConfig] | None = None,
    context: bool = True,
    savings: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Distil ``sizes`` facts on ``host``, write JSON, markdown and PNG reports into ``out_dir``; return the JSON.

    The JSON is rewritten after every size, so an interrupted run keeps what it measured. Each size's training and
    evaluation is drawn as a status line on stderr (``memos.progress``); ``log`` gets one line per finished size.

    ``extra_recipes`` (name -> recipe) are distilled at every size too, and ``LEGACY_RECIPE`` with
    ``compare_legacy`` at ``legacy_sizes`` (default: every size; the legacy recipe is the slow one, so a ratio can
    be taken at a small size): the report's "training time per fact count" table gives each recipe's time at each
    size and its ratio to the default recipe's (and to the legacy one's) in the same run.

    Raises:
        ValueError: no sizes, or a size below 1, or a legacy size that is not one of ``sizes``.
    """
    if not sizes or min(sizes) < 1:
        raise ValueError("need at least one size, each >= 1")
    if legacy_sizes is not None and not set(legacy_sizes) <= set(sizes):
        raise ValueError(f"legacy sizes {sorted(legacy_sizes)} must be among the sizes {sorted(sizes)}")
    config = config or LoraConfig()
    extra_recipes = dict(extra_recipes or {})
    if clash := {"default", "context", "legacy"} & set(extra_recipes):
        raise ValueError(f"recipe names {sorted(clash)} are taken by the bench's own recipes")
    recipes = {"default": config, **extra_recipes,
               **({"context": config.model_copy(update={"teacher": "context"})} if context else {}),
               **({"legacy": LEGACY_RECIPE} if compare_legacy else {})}
    out = Path(out_dir)
    (out / "adapters").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "settings": {"sizes": list(sizes), "seed": seed, "config": config.model_dump(mode="json"),
                     "legacy_sizes": list(legacy_sizes) if legacy_sizes is not None else None,
                     "recipes": {name: c.model_dump(mode="json") for name, c in recipes.items()}},
        "environment": _environment(host),
        "rows": [],
    }
    started = time.perf_counter()
    refs = []
    for size in sizes:
        facts = [SourceFact(id=i, version=1, text=t) for i, t in synthetic_facts(size, seed)]
        for name, recipe in recipes.items():
            if name == "legacy" and legacy_sizes is not None and size not in legacy_sizes:
                continue
            with Progress(f"[{size} facts, {name}] train") as bar:
                result = distill(host, facts, recipe, progress=_progress_drawer(f"{size} facts, {name}", bar))
            assert result.payload is not None and result.evaluation is not None, "nothing cancels the bench"
            ref = save_adapter(result.payload, str(out / "adapters" / f"facts-{size}-{name}.safetensors"))
            saved = None
            if name == "default":
                refs.append(ref)
                if savings:
                    label = f"[{size} facts] context savings"
                    with Progress(label) as bar:
                        saved = context_savings(host, facts, result.payload,
                                                on_question=lambda i, n, bar=bar, label=label: bar.update(i, n, label=label))
            report["rows"].append({
                "facts": size,
                "recipe": name,
                **result.evaluation.model_dump(mode="json"),
                "adapter_bytes": ref.size_bytes,
                "adapter_parameters": result.payload.num_parameters,
                "loss_curve": [list(p) for p in result.loss_curve],
                "sample_facts": [f.text for f in facts[:3]],
                "load_average_after": os.getloadavg(),
                **({"savings": saved} if saved is not None else {}),
            })
            log(f"[{size} facts, {name}] " + _row_line(report["rows"][-1]))
            _write(report, out, started)
    report["serving"] = measure_serving_costs(host, refs[-1], repeats=serving_repeats)
    report["environment"]["load_average_end"] = os.getloadavg()
    _write(report, out, started)
    _plot(report, out / "parametric.png")
    return report


def context_savings(host: ModelHost, facts: list[SourceFact], payload: AdapterPayload, *,
                    max_new_tokens: int = 24, on_question: Any = None) -> dict[str, Any]:
    """Each fact's trained question answered two ways on ``host``, greedy: with the adapter standing in for the
    facts (a memory-free prompt, the adapter applied) and with the facts as memory blocks in front (their KV cache,
    no adapter). Returns prompt tokens (mean per question) and answer accuracy for both."""
    from memos.models import fact_questions
    from memos.models.adapters import generate_with_adapter, prepare

    questions = [(q.question, q.key) for f in facts for s in fact_questions.derive(f.text)
                 for q in s.questions if q.trained]
    ready = prepare(payload, host.loaded.model, name="the benchmarked adapter")
    kv = host.build_kv([f.text for f in facts])
    conditions: dict[str, dict[str, Any]] = {"adapter": {"tokens": 0, "hits": 0}, "text": {"tokens": 0, "hits": 0}}
    for i, (question, key) in enumerate(questions, 1):
        ask = [{"role": "user", "content": question}]
        for name, kwargs in (("adapter", {"adapter": ready}), ("text", {"adapter": None, "kv": kv})):
            out = generate_with_adapter(host, ask, max_new_tokens=max_new_tokens, **kwargs)
            conditions[name]["tokens"] += out.prompt_tokens
            conditions[name]["hits"] += fact_questions.answer_matches(out.text, key)
        if on_question is not None:
            on_question(i, len(questions))
    n = len(questions)
    return {"questions": n, "memory_tokens": kv.num_tokens,
            **{f"{name}_prompt_tokens": c["tokens"] / n for name, c in conditions.items()},
            **{f"{name}_accuracy": c["hits"] / n for name, c in conditions.items()}}


def _progress_drawer(what: str, bar: Progress) -> Any:
    def report(p: DistillProgress) -> None:
        bar.update(p.step, p.total, label=f"[{what}] {p.phase}",
                   note="" if p.loss is None else f"loss {p.loss:.3f}")

    return report


def _write(report: dict[str, Any], out: Path, started: float) -> None:
    report["duration_s"] = time.perf_counter() - started
    (out / "parametric.json").write_text(json.dumps(report, indent=2))
    (out / "parametric.md").write_text(render_markdown(report))


def _environment(host: ModelHost) -> dict[str, Any]:
    from importlib.metadata import version

    return {**model_environment(host), "peft": version("peft")}


def _row_line(r: dict[str, Any]) -> str:
    held = "-" if r["held_out_recall_with"] is None else f"{r['held_out_recall_with']:.0%}"
    held_base = "-" if r["held_out_recall_without"] is None else f"{r['held_out_recall_without']:.0%}"
    return (f"recall {r['recall_with']:.0%} (base {r['recall_without']:.0%}), held-out {held} (base {held_base}), "
            f"locality delta {r['locality_delta']:+.3f} nats, train {r['train_s']:.0f} s ({_cpu(r)} CPU s), "
            f"{r['adapter_bytes'] / 2**20:.2f} MiB")


def _layers(top: float | None) -> str:
    from memos.models.distill import FAST_FROM_FACTS, FAST_TOP_LAYERS

    if top is None:
        return f"the top {FAST_TOP_LAYERS:.0%} of the layers from {FAST_FROM_FACTS} facts up, every layer below"
    return f"the top {top:.0%} of the layers"


def _cpu(r: dict[str, Any]) -> str:
    return "-" if r.get("train_cpu_s") is None else f"{r['train_cpu_s']:.0f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The benchmark's tables as markdown."""
    env = report["environment"]
    cfg = report["settings"]["config"]
    lines = [
        f"Model `{env['fingerprint']['model_id']}` ({env['fingerprint']['dtype']}), torch {env['torch']}, peft "
        f"{env['peft']}, {env['torch_threads']} threads ({env['cpus']} CPUs, load average at start "
        f"{env['load_average_start'][0]:.1f}; OpenMP wait {env.get('omp_wait_policy') or 'default'}, spin count "
        f"{env.get('gomp_spincount') or 'default'}). Default recipe: LoRA rank {cfg['rank']}, alpha {cfg['alpha']:g}, "
        f"{len(cfg['target_modules'])} module kinds in {_layers(cfg.get('top_layers', 1.0))}, "
        f"{cfg.get('dtype') or 'bf16 from 20 facts up, float32 below'}, lr {cfg['learning_rate']:g}, batch {cfg['batch_size']}, at most "
        f"{cfg['epochs']} epochs{', early stop' if cfg.get('early_stop') else ''}, replay weight "
        f"{cfg['replay_weight']:g}, seed {report['settings']['seed']}.",
        "",
        "| facts | recipe | recall with adapter | recall base model | held-out recall with | held-out base "
        "| locality loss base | locality delta | steps | train s | train CPU s | eval s | adapter MiB | parameters |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        held = "-" if r["held_out_recall_with"] is None else f"{r['held_out_recall_with']:.0%}"
        held_base = "-" if r["held_out_recall_without"] is None else f"{r['held_out_recall_without']:.0%}"
        lines.append(
            f"| {r['facts']} | {r.get('recipe', 'default')} | {r['recall_with']:.0%} ({r['questions']} q) "
            f"| {r['recall_without']:.0%} | {held} ({r['held_out_questions']} q) | {held_base} "
            f"| {r['locality_loss_without']:.3f} | {r['locality_delta']:+.3f} | {r['steps']} | {r['train_s']:.0f} "
            f"| {_cpu(r)} | {r['eval_s']:.0f} | {r['adapter_bytes'] / 2**20:.2f} | {r['adapter_parameters']:,} |"
        )
    lines += _timing_table(report["rows"])
    saved = [r for r in report["rows"] if r.get("savings")]
    if saved:
        lines += [
            "",
            "Context savings (default adapter; each fact's trained question, greedy, through the serving path): the "
            "adapter standing in for the sources (memory-free prompt) vs the sources as memory blocks in front "
            "(their KV cache, no adapter).",
            "",
            "| facts | questions | prompt tokens, sources in context | prompt tokens, adapter | saved per request "
            "| accuracy, sources in context | accuracy, adapter |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in saved:
            v = r["savings"]
            lines.append(f"| {r['facts']} | {v['questions']} | {v['text_prompt_tokens']:.0f} | "
                         f"{v['adapter_prompt_tokens']:.0f} | {v['text_prompt_tokens'] - v['adapter_prompt_tokens']:.0f} "
                         f"| {v['text_accuracy']:.0%} | {v['adapter_accuracy']:.0%} |")
    context_rows = [r for r in report["rows"] if r.get("teacher") == "context"]
    if context_rows:
        lines += ["", "Text training vs context distillation (same facts, same run; teacher recall: the model with "
                  "each memory's block in front, i.e. what the context-distilled adapter can learn at best):", "",
                  "| facts | teacher | recall | held-out recall | locality delta | teacher recall | train CPU s |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for r in report["rows"]:
            if r.get("recipe", "default") in ("default", "context"):
                held = "-" if r["held_out_recall_with"] is None else f"{r['held_out_recall_with']:.0%}"
                teach = "-" if r.get("teacher_recall") is None else f"{r['teacher_recall']:.0%}"
                lines.append(f"| {r['facts']} | {r.get('teacher', 'text')} | {r['recall_with']:.0%} | {held} "
                             f"| {r['locality_delta']:+.3f} | {teach} | {_cpu(r)} |")
    if serving := report.get("serving"):
        tps = serving["decode_tokens_per_s"]
        lines += [
            "",
            f"Serving ({Path(serving['adapter']).name}, median of {serving['repeats']}): load and prepare "
            f"{serving['load_s'] * 1e3:.0f} ms; apply+remove hooks {serving['hooks_switch_ms']:.2f} ms vs peft "
            f"set_adapter {serving['peft_set_adapter_ms']:.2f} ms; greedy decoding {tps['no_adapter']:.1f} tok/s "
            f"without adapter, {tps['hooks']:.1f} with hooks, {tps['peft']:.1f} with peft LoRA layers; same greedy "
            f"tokens from hooks and peft: {'yes' if serving['hooks_and_peft_same_tokens'] else 'NO'}.",
        ]
    return "\n".join(lines) + "\n"


def _timing_table(rows: list[dict[str, Any]]) -> list[str]:
    """Training time per fact count: each recipe at each size, with its ratio to the default recipe (and to the
    legacy one) at the same size in the same run."""
    if not rows:
        return []

    def ratio(r: dict[str, Any], base: dict[str, Any] | None) -> str:
        if base is None or r is base:
            return "-"
        wall = r["train_s"] / base["train_s"]
        if r.get("train_cpu_s") and base.get("train_cpu_s"):
            return f"{wall:.2f}x (CPU {r['train_cpu_s'] / base['train_cpu_s']:.2f}x)"
        return f"{wall:.2f}x"

    lines = ["", "Training time per fact count (same run; ratios to the default and to the legacy recipe at the "
             "same size):", "",
             "| facts | recipe | steps | train s | train CPU s | CPU s per fact | eval s | recall | held-out "
             "| locality delta | / default | / legacy |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        same = {x.get("recipe", "default"): x for x in rows if x["facts"] == r["facts"]}
        held = "-" if r["held_out_recall_with"] is None else f"{r['held_out_recall_with']:.0%}"
        per_fact = "-" if r.get("train_cpu_s") is None else f"{r['train_cpu_s'] / r['facts']:.1f}"
        lines.append(f"| {r['facts']} | {r.get('recipe', 'default')} | {r['steps']} | {r['train_s']:.0f} | {_cpu(r)} "
                     f"| {per_fact} | {r['eval_s']:.0f} | {r['recall_with']:.0%} | {held} "
                     f"| {r['locality_delta']:+.3f} | {ratio(r, same.get('default'))} | {ratio(r, same.get('legacy'))} |")
    return lines


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("recipe", "default") == "default"]
    x = [r["facts"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.plot(x, [r["recall_with"] for r in rows], "o-", label="with adapter (trained phrasing)")
    ax.plot(x, [r["held_out_recall_with"] or 0 for r in rows], "s--", label="with adapter (held-out phrasing)")
    ax.plot(x, [r["recall_without"] for r in rows], "x:", label="base model")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("closed-book recall")
    ax.legend(fontsize=8)
    axes[1].plot(x, [r["locality_delta"] for r in rows], "o-")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_title("locality: loss delta on general text (nats)")
    axes[2].plot(x, [r["train_s"] for r in rows], "o-")
    axes[2].set_title("training time (s)")
    for ax in axes:
        ax.set_xlabel("facts distilled")
        ax.grid(True, alpha=0.3)
    fp = report["environment"]["fingerprint"]
    fig.suptitle(f"{fp['model_id']} ({fp['dtype']}), {report['environment']['torch_threads']} threads")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``memos bench parametric``."""
    defaults = LoraConfig()
    parser.add_argument("--out", default="bench-results/parametric", help="output directory")
    parser.add_argument("--model", default="smollm2", help="'smollm2', a .gguf file or a local HF model directory")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--cache-dir", default=None, help="converted-model cache (default: $MEMOS_MODEL_CACHE or ~/.cache/memos/models)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable core)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="numbers of facts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--rank", type=int, default=defaults.rank)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--replay-weight", type=float, default=defaults.replay_weight)
    parser.add_argument("--top-layers", type=float, default=defaults.top_layers,
                        help="share of decoder layers adapted, from the top (default: by the number of facts)")
    parser.add_argument("--compare-legacy", action="store_true",
                        help="also distil each size with the recipe before 2026-12, in the same run")
    parser.add_argument("--legacy-sizes", type=int, nargs="+", default=None,
                        help="with --compare-legacy: only these sizes (each one of --sizes; the legacy recipe is slow)")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=JSON",
                        help="also distil each size with the default recipe changed by JSON, e.g. "
                             "'top3={\"top_layers\": 0.3}' (repeatable)")
    parser.add_argument("--pack", action=argparse.BooleanOptionalAction, default=defaults.pack,
                        help="the default recipe's packing, each batch as one sequence (default: by the number of facts)")
    parser.add_argument("--no-context", action="store_true",
                        help="skip the context-distilled adapter (teacher: the model with the memories in front)")
    parser.add_argument("--no-savings", action="store_true",
                        help="skip asking each question with the adapter and with the sources in context")


def main(args: argparse.Namespace) -> int:
    """Load the model named by ``args`` and run the benchmark; print the markdown tables."""
    from memos.config import default_model_cache
    from memos.models.loader import ModelSpec

    cache_dir = Path(args.cache_dir) if args.cache_dir else default_model_cache()
    host = ModelHost(ModelSpec(model=args.model, dtype=args.dtype, cache_dir=cache_dir, num_threads=args.threads))
    config = LoraConfig().model_copy(update={
        "epochs": args.epochs, "rank": args.rank, "alpha": 2.0 * args.rank, "learning_rate": args.learning_rate,
        "replay_weight": args.replay_weight, "top_layers": args.top_layers, "pack": args.pack})
    config = LoraConfig(**config.model_dump())  # validated
    extra = {}
    for spec in args.recipe:
        name, _, fields = spec.partition("=")
        try:
            extra[name.strip()] = LoraConfig(**{**config.model_dump(), **json.loads(fields)})
        except (ValueError, TypeError) as exc:
            raise SystemExit(f"--recipe {spec!r}: expected NAME=JSON of LoraConfig fields ({exc})") from exc
    report = run_parametric_bench(args.out, tuple(args.sizes), host=host, config=config, seed=args.seed,
                                  compare_legacy=args.compare_legacy,
                                  legacy_sizes=tuple(args.legacy_sizes) if args.legacy_sizes else None,
                                  extra_recipes=extra, context=not args.no_context, savings=not args.no_savings)
    print(render_markdown(report), end="")
    print(f"wrote {Path(args.out) / 'parametric.json'}, parametric.md, parametric.png")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m memos.bench.parametric", description=__doc__.split("\n")[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
