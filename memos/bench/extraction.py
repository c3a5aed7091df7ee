"""``memos bench extraction``: LoCoMo conversations through ``ingest`` against one memory per turn, in the same run.

For each conversation two fresh cubes are filled in one kernel (SQLite + embedded Chroma on disk + MiniLM, the
language model of ``--llm``, the rule-based fallback by default):
- ``turns``: every turn one memory through ``write`` (as ``memos bench retrieval`` does);
- ``ingest``: every session's turns through ``ingest`` (message id = the turn's dia id, speaker, session date as
  ``at``, session number), in calls of at most ``BATCH`` messages: what the extractor decides is what is stored.

Then every question of categories 1-4 is asked once per cube (hybrid ``search``, k = 10). A hit *covers* the turns
its provenance points at (``source_refs``; for the turns cube, the turn itself); recall@k of a question is the
fraction of its evidence turns covered by the top k hits (the same as ``memos bench retrieval``'s for one memory per
turn). Reported: memories stored, ingest decisions, how many evidence turns any extracted memory points at
(extraction coverage), recall@k overall and per category, and search latency p50/p95 of each cube measured in the
same run (the machine is shared: compare the two, not against other runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memos import syscalls as sc
from memos.bench.locomo import CATEGORY_NAMES, Conversation, load_locomo
from memos.bench.metrics import percentile
from memos.bench.retrieval import PRINCIPAL, _ingest, cube_name
from memos.kernel import Kernel
from memos.models.llm import LanguageModel
from memos.models.llm_rules import parse_when
from memos.progress import Progress
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import Embedder
from memos.types import ConversationMessage

BATCH = 64
KS = (1, 5, 10)
SYSTEMS = ("turns", "ingest")


def session_messages(conversation: Conversation) -> list[list[ConversationMessage]]:
    """Each session's turns as ``ingest`` messages, in calls of at most ``BATCH``."""
    calls = []
    for session in conversation.sessions:
        when = parse_when(session.date_time)
        msgs = [
            ConversationMessage(
                id=t.dia_id, speaker=t.speaker, at=when, session=str(session.number),
                content=t.text + (f" [shares a photo: {t.image_caption}]" if t.image_caption else ""),
            )
            for t in session.turns if t.text.strip() or t.image_caption
        ]
        calls += [msgs[i:i + BATCH] for i in range(0, len(msgs), BATCH)]
    return calls


def _covered(hit: Any, system: str) -> list[str]:
    if system == "turns":
        return [hit.memory.metadata["dia_id"]]
    return list(hit.memory.provenance.source_refs)


def _bench_conversation(conversation: Conversation, kernel: Kernel, k: int, bar: Any) -> dict[str, Any]:
    cubes = {"turns": cube_name(conversation), "ingest": cube_name(conversation) + "-ingest"}
    started = time.perf_counter()
    _ingest(kernel, conversation, cubes["turns"], bar)
    turns_s = time.perf_counter() - started
    kernel.execute(PRINCIPAL, sc.CreateCube(name=cubes["ingest"]))
    decisions: Counter[str] = Counter()
    started = time.perf_counter()
    for messages in session_messages(conversation):
        result = kernel.execute(PRINCIPAL, sc.Ingest(cube=cubes["ingest"], messages=tuple(messages)))
        decisions.update(d.action for d in result.decisions)  # type: ignore[attr-defined]
        bar(len(messages))
    ingest_s = time.perf_counter() - started
    referenced: set[str] = set()
    stored = 0
    offset = 0
    while True:
        page = kernel.execute(PRINCIPAL, sc.ListMemories(cube=cubes["ingest"], limit=1000, offset=offset)).memories  # type: ignore[attr-defined]
        for memory in page:
            referenced.update(memory.provenance.source_refs)
        stored += len(page)
        offset += len(page)
        if len(page) < 1000:
            break
    rows: dict[str, list[tuple[int, list[list[str]], tuple[str, ...], float]]] = {s: [] for s in SYSTEMS}
    for system in SYSTEMS:
        for qa in conversation.asked():
            t0 = time.perf_counter()
            hits = kernel.execute(PRINCIPAL, sc.Search(query=qa.question, cubes=(cubes[system],), k=k)).hits  # type: ignore[attr-defined]
            seconds = time.perf_counter() - t0
            covered = [_covered(hit, system) for hit in hits]
            rows[system].append((qa.category, covered, qa.evidence, seconds))
            bar()
    evidence = {e for qa in conversation.asked() for e in qa.evidence}
    return {
        "rows": rows, "turns_s": turns_s, "ingest_s": ingest_s, "decisions": decisions, "stored": stored,
        "turns": sum(1 for _ in conversation.turns()), "evidence": len(evidence),
        "evidence_referenced": len(evidence & referenced),
    }


def run_extraction_bench(
    data_path: str | Path, out_dir: str | Path, *, llm: LanguageModel, embedder: Embedder,
    limit_conversations: int | None = None, k: int = 10,
) -> dict[str, Any]:
    """Run the benchmark, write ``extraction.json`` and ``extraction.md`` into ``out_dir``; return the JSON's dict.

    Raises:
        OSError, ValueError: the data file is unreadable or not LoCoMo-shaped. MemosError: a syscall failed.
    """
    from memos.storage.chroma import ChromaIndex

    started = time.perf_counter()
    conversations = load_locomo(data_path)[:limit_conversations]
    embedder.embed(["warm-up"])
    per: list[dict[str, Any]] = []
    work = sum(2 * sum(1 for _ in c.turns()) + len(SYSTEMS) * len(c.asked()) for c in conversations)
    done = 0
    with Progress("extraction", total=work) as progress:
        def bar(n: int = 1) -> None:
            nonlocal done
            done += n
            progress.update(done)

        for conversation in conversations:
            with tempfile.TemporaryDirectory(prefix="memos-bench-", ignore_cleanup_errors=True) as tmp:
                kernel = Kernel(SqliteStore(Path(tmp) / "memos.db"), ChromaIndex(Path(tmp) / "chroma"), embedder, llm=llm)
                try:
                    per.append(_bench_conversation(conversation, kernel, k, bar))
                finally:
                    kernel.close()
    ks = tuple(x for x in KS if x <= k)
    systems = {}
    for system in SYSTEMS:
        rows = [r for p in per for r in p["rows"][system]]
        pairs = [(r[1], r[2]) for r in rows]
        latencies = [r[3] * 1000 for r in rows]
        systems[system] = {
            "memories": sum(p["turns"] for p in per) if system == "turns" else sum(p["stored"] for p in per),
            "recall": _recall(pairs, ks),
            "per_category": {
                f"{c} {CATEGORY_NAMES[c]}": {"questions": sum(r[0] == c for r in rows),
                                             **_recall([p for p, r in zip(pairs, rows, strict=True) if r[0] == c], ks)}
                for c in sorted({r[0] for r in rows})
            },
            "search_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
            "write_s": sum(p["turns_s"] if system == "turns" else p["ingest_s"] for p in per),
        }
    decisions: Counter[str] = Counter()
    for p in per:
        decisions.update(p["decisions"])
    result = {
        "data": str(data_path), "conversations": len(conversations), "turns": sum(p["turns"] for p in per),
        "questions": len(per and [r for p in per for r in p["rows"]["turns"]]), "k": k,
        "extractor": llm.name, "decisions": dict(decisions),
        "evidence_turns": sum(p["evidence"] for p in per),
        "evidence_turns_referenced": sum(p["evidence_referenced"] for p in per),
        "systems": systems,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "shared": True},
        "wall_seconds": time.perf_counter() - started,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extraction.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "extraction.md").write_text(render_markdown(result), encoding="utf-8")
    return result


def _recall(pairs: Sequence[tuple[list[list[str]], tuple[str, ...]]], ks: Sequence[int]) -> dict[str, float]:
    """Mean over questions of the fraction of evidence turns covered by the top k hits (each hit covers a list)."""
    return {
        f"R@{k}": sum(len(set(e) & {t for hit in covered[:k] for t in hit}) / len(set(e)) for covered, e in pairs)
        / len(pairs) if pairs else float("nan")
        for k in ks
    }


def render_markdown(result: dict[str, Any]) -> str:
    ks = [key for key in next(iter(result["systems"].values()))["recall"]]
    lines = [
        f"LoCoMo extraction: {result['conversations']} conversations, {result['turns']} turns, {result['questions']} "
        f"questions (categories 1-4); extractor {result['extractor']}; k = {result['k']}.",
        "",
        "| cube | memories | " + " | ".join(ks) + " | search p50 ms | search p95 ms | write s |",
        "|---|---:|" + "---:|" * (len(ks) + 3),
    ]
    for name, s in result["systems"].items():
        lines.append(f"| {name} | {s['memories']} | " + " | ".join(f"{s['recall'][c]:.3f}" for c in ks)
                     + f" | {s['search_ms']['p50']:.1f} | {s['search_ms']['p95']:.1f} | {s['write_s']:.1f} |")
    lines += ["", "| category | questions | " + " | ".join(f"{n} {c}" for n in result["systems"] for c in ks) + " |",
              "|---|---:|" + "---:|" * (len(ks) * len(result["systems"]))]
    categories = next(iter(result["systems"].values()))["per_category"]
    for category, info in categories.items():
        cells = [f"{s['per_category'][category][c]:.3f}" for s in result["systems"].values() for c in ks]
        lines.append(f"| {category} | {info['questions']} | " + " | ".join(cells) + " |")
    d = result["decisions"]
    lines += [
        "",
        f"Ingest decisions: {d.get('add', 0)} add, {d.get('update', 0)} update, {d.get('invalidate', 0)} invalidate, "
        f"{d.get('noop', 0)} noop. Evidence turns some extracted memory points at: "
        f"{result['evidence_turns_referenced']} of {result['evidence_turns']}.",
        f"Wall time {result['wall_seconds']:.0f} s on {result['machine']['cpus']} CPUs (shared machine: compare the "
        "two cubes of this run, not runs with each other).",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="a LoCoMo JSON file (e.g. locomo_dev.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/extraction"), help="folder for JSON and table")
    parser.add_argument("--limit", type=int, default=None, help="only the first N conversations")


def main(args: argparse.Namespace) -> int:
    from memos.config import Settings
    from memos.models.embedder import MiniLMEmbedder
    from memos.models.llm import open_language_model
    from memos.service import lazy_model

    settings = Settings.from_env()
    llm = open_language_model(settings, lazy_model(settings))  # MEMOS_LLM=local needs the model host
    result = run_extraction_bench(args.data, args.out, llm=llm, embedder=MiniLMEmbedder(cache_size=1),
                                  limit_conversations=args.limit)
    print(render_markdown(result), end="")
    print(f"wrote {Path(args.out) / 'extraction.json'}, extraction.md")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m memos.bench.extraction", description=__doc__.split("\n")[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
