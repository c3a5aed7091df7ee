"""``memos bench retrieval``: recall@k of LoCoMo evidence turns for memos' hybrid search and a plain dense baseline.

For each conversation a fresh kernel is built on a temporary data dir (SQLite + embedded Chroma on disk + MiniLM),
with one cube per conversation. Every turn becomes one memory through ``Kernel.execute(WriteMany)``, a
conversation's turns in one call (that is what the ingest rate measures), with content ``[<session date>] <speaker>: <text>`` plus ``[shares a photo: <caption>]``
when the turn shared an image, and metadata ``dia_id``, ``session``, ``session_date``, ``speaker``. Every question
of categories 1-4 is then asked as one ``Search`` (k = the largest k asked) per mode:

- ``hybrid``: memos' search, dense + FTS5 bm25 fused (memos.kernel.retrieval);
- ``dense``: the plain dense baseline: the same embedder over the same single turns, cosine top-k, no fusion;
- ``lexical``: FTS5 bm25 alone, for reference.

recall@k for smaller k is read from the prefix of that one ranking. Each mode runs as its own pass over the
questions with an embedder cache of one entry, so every search pays for embedding its query, as a new query does.
Latency is the wall time of ``execute`` (embedding, both retrievers, fusion; reads are counted in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memos import syscalls as sc
from memos.bench.locomo import CATEGORY_NAMES, Conversation, Session, Turn, load_locomo
from memos.bench.metrics import percentile, recall_table
from memos.errors import error_from_wire
from memos.kernel.kernel import Kernel
from memos.kernel.retrieval import RRF_K
from memos.models.embedder import MiniLMEmbedder
from memos.progress import Progress
from memos.storage.chroma import ChromaIndex
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import Embedder

DEFAULT_KS = (1, 5, 10, 25)
PRINCIPAL = "bench"
#: mode -> the name the report gives it
SYSTEMS = {"hybrid": "memos hybrid", "dense": "dense baseline", "lexical": "lexical (FTS5 bm25)"}


def turn_content(session: Session, turn: Turn) -> str:
    """The text of a turn's memory. The session date prefix lets "when" questions and dated questions match."""
    caption = f" [shares a photo: {turn.image_caption}]" if turn.image_caption else ""
    return f"[{session.date_time}] {turn.speaker}: {turn.text}{caption}"


def cube_name(conversation: Conversation) -> str:
    return "locomo/" + (re.sub(r"[^a-z0-9_-]+", "-", conversation.sample_id.lower()).strip("-") or "conversation")


def _nothing(done: int = 1) -> None:
    """A progress tick that draws nothing."""


def _ingest(kernel: Kernel, conversation: Conversation, cube: str, tick: Callable[..., None] = _nothing) -> float:
    """Write every turn as one memory through ``write_many`` (up to ``MAX_WRITE_MANY`` turns per call; ``tick(n)``
    after each call). Returns the seconds it took.

    Raises:
        MemosError: a turn was refused (the item's typed error).
    """
    kernel.execute(PRINCIPAL, sc.CreateCube(name=cube, description=f"LoCoMo {conversation.sample_id}"))
    items = [
        {
            "cube": cube, "content": turn_content(session, turn),
            "metadata": {"dia_id": turn.dia_id, "session": session.number, "session_date": session.date_time,
                         "speaker": turn.speaker},
            "source_refs": [f"locomo:{conversation.sample_id}:{turn.dia_id}"],
        }
        for session, turn in conversation.turns()
    ]
    started = time.perf_counter()
    for start in range(0, len(items), sc.MAX_WRITE_MANY):
        part = items[start : start + sc.MAX_WRITE_MANY]
        result = kernel.execute(PRINCIPAL, sc.WriteMany(items=tuple(part)))
        refused = next((o.error for o in result.results if o.error), None)
        if refused is not None:
            raise error_from_wire(refused)
        tick(len(part))
    return time.perf_counter() - started


def _ask(kernel: Kernel, cube: str, question: str, k: int, mode: str) -> tuple[list[str], float]:
    """The dia ids of the top ``k`` hits, best first, and the seconds ``execute`` took."""
    started = time.perf_counter()
    result = kernel.execute(PRINCIPAL, sc.Search(query=question, cubes=(cube,), k=k, mode=mode))
    elapsed = time.perf_counter() - started
    return [hit.memory.metadata["dia_id"] for hit in result.hits], elapsed


def _bench_conversation(
    conversation: Conversation, embedder: Embedder, k: int, workdir: Path, tick: Callable[..., None] = _nothing
) -> tuple[float, dict[str, list[tuple[int, list[str], tuple[str, ...], float]]]]:
    """Ingest one conversation into a fresh kernel and ask its questions in every mode (``tick()`` after each
    write and each question).

    Returns the ingest seconds and, per mode, (category, ranked dia ids, evidence, seconds) per question.
    """
    kernel = Kernel(SqliteStore(workdir / "memos.db"), ChromaIndex(workdir / "chroma"), embedder)
    try:
        cube = cube_name(conversation)
        ingest_s = _ingest(kernel, conversation, cube, tick)
        answers: dict[str, list[tuple[int, list[str], tuple[str, ...], float]]] = {}
        for mode in SYSTEMS:
            answers[mode] = []
            for qa in conversation.asked():
                ranked, seconds = _ask(kernel, cube, qa.question, k, mode)
                answers[mode].append((qa.category, ranked, qa.evidence, seconds))
                tick()
    finally:
        kernel.close()
    return ingest_s, answers


def _summary(rows: list[tuple[int, list[str], tuple[str, ...], float]], ks: Sequence[int]) -> dict[str, Any]:
    latencies = [r[3] * 1000.0 for r in rows]
    per_category = {}
    for category in sorted({r[0] for r in rows}):
        part = [r for r in rows if r[0] == category]
        per_category[f"{category} {CATEGORY_NAMES[category]}"] = {
            "questions": len(part), **recall_table([(r[1], r[2]) for r in part], ks),
        }
    return {
        "recall": recall_table([(r[1], r[2]) for r in rows], ks),
        "per_category": per_category,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95), "mean": sum(latencies) / len(latencies)},
    }


def run_retrieval_bench(
    data_path: str | Path,
    out_dir: str | Path,
    *,
    limit_conversations: int | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``retrieval.json``, ``retrieval.md`` and ``retrieval.png`` into ``out_dir``; return
    the JSON's dict.

    ``embedder`` defaults to MiniLM with a one-entry cache (see the module docstring); a test may pass another.

    Raises:
        ValueError: ``ks`` is empty or holds a k outside 1..MAX_K, or the file has no question to ask.
        OSError, ValueError: the data file is unreadable or not LoCoMo-shaped (memos.bench.locomo).
        MemosError: a syscall failed (the kernel's typed error).
    """
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1 or ks[-1] > sc.MAX_K:
        raise ValueError(f"every k must be within 1..{sc.MAX_K}, got {list(ks)}")
    started = time.perf_counter()
    conversations = load_locomo(data_path)[:limit_conversations]
    if not any(c.asked() for c in conversations):
        raise ValueError(f"{data_path}: no question of categories 1-4 with evidence to ask")
    if embedder is None:
        embedder = MiniLMEmbedder(cache_size=1)
    embedder.embed(["warm-up"])  # load the model outside the timed ingest
    ingest_s = 0.0
    rows: dict[str, list[tuple[int, list[str], tuple[str, ...], float]]] = {mode: [] for mode in SYSTEMS}
    # Progress on stderr, one unit per write and per question asked (in every mode).
    work = sum(sum(1 for _ in c.turns()) + len(SYSTEMS) * len(c.asked()) for c in conversations)
    done = 0
    with Progress("retrieval", total=work) as bar:
        for number, conversation in enumerate(conversations, 1):
            note = f"conversation {number}/{len(conversations)} ({conversation.sample_id})"

            def tick(n: int = 1, note: str = note) -> None:
                nonlocal done
                done += n
                bar.update(done, note=note)

            with tempfile.TemporaryDirectory(prefix="memos-bench-", ignore_cleanup_errors=True) as tmp:
                seconds, answers = _bench_conversation(conversation, embedder, ks[-1], Path(tmp), tick)
            ingest_s += seconds
            for mode, answered in answers.items():
                rows[mode].extend(answered)
    memories = sum(1 for c in conversations for _ in c.turns())
    result = {
        "data": str(data_path),
        "conversations": len(conversations),
        "turns": memories,
        "questions": len(rows["hybrid"]),
        "ks": list(ks),
        "content": "[<session date>] <speaker>: <text> [shares a photo: <caption>]",
        "systems": {SYSTEMS[mode]: {"mode": mode, **_summary(r, ks)} for mode, r in rows.items()},
        "ingest": {
            "memories": memories, "seconds": ingest_s, "memories_per_s": memories / ingest_s if ingest_s else None,
            "path": "write_many through Kernel.execute, a conversation per call (SQLite synchronous=FULL, Chroma on disk)",
        },
        "settings": {"embedder": getattr(embedder, "name", type(embedder).__name__), "rrf_k": RRF_K},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "wall_seconds": time.perf_counter() - started,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (out / "retrieval.md").write_text(render_markdown(result), encoding="utf-8")
    _plot(result, out / "retrieval.png")
    return result


def render_markdown(result: dict[str, Any]) -> str:
    """The report as markdown: overall table, per-category table, ingest rate."""
    ks = result["ks"]
    recall_cols = [f"R@{k}" for k in ks]
    systems = result["systems"]
    lines = [
        f"LoCoMo retrieval: {result['conversations']} conversations, {result['turns']} turns (one memory each), "
        f"{result['questions']} questions (categories 1-4).",
        "",
        "| system | " + " | ".join(recall_cols) + " | p50 ms | p95 ms |",
        "|---|" + "---:|" * (len(ks) + 2),
    ]
    for name, s in systems.items():
        cells = [f"{s['recall'][c]:.3f}" for c in recall_cols]
        lat = s["latency_ms"]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {lat['p50']:.1f} | {lat['p95']:.1f} |")
    lines += ["", "| category | questions | system | " + " | ".join(recall_cols) + " |", "|---|---:|---|" + "---:|" * len(ks)]
    categories = next(iter(systems.values()))["per_category"]
    for category, info in categories.items():
        for name, s in systems.items():
            cells = [f"{s['per_category'][category][c]:.3f}" for c in recall_cols]
            lines.append(f"| {category} | {info['questions']} | {name} | " + " | ".join(cells) + " |")
    ingest = result["ingest"]
    rate = ingest["memories_per_s"]
    lines += [
        "",
        f"Ingest: {ingest['memories']} memories in {ingest['seconds']:.1f} s = "
        f"{rate:.1f} memories/s ({ingest['path']}).",
        f"Wall time of the whole run: {result['wall_seconds']:.0f} s on {result['machine']['cpus']} CPUs.",
        "",
    ]
    return "\n".join(lines)


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = result["ks"]
    systems = result["systems"]
    categories = list(next(iter(systems.values()))["per_category"])
    k_mid = 10 if 10 in ks else ks[-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, s in systems.items():
        left.plot(ks, [s["recall"][f"R@{k}"] for k in ks], "o-", label=name)
    left.set_xscale("log")
    left.set_xticks(ks, [str(k) for k in ks])
    left.set_xlabel("k")
    left.set_ylabel("recall@k of evidence turns")
    left.set_ylim(0, 1)
    left.grid(True, alpha=0.3)
    left.legend()
    width = 0.8 / len(systems)
    for i, (name, s) in enumerate(systems.items()):
        xs = [j + i * width for j in range(len(categories))]
        right.bar(xs, [s["per_category"][c][f"R@{k_mid}"] for c in categories], width, label=name)
    right.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(categories))], categories)
    right.set_ylabel(f"recall@{k_mid}")
    right.set_ylim(0, 1)
    right.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"LoCoMo: {result['conversations']} conversations, {result['questions']} questions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``memos bench retrieval`` (and of ``python -m memos.bench.retrieval``)."""
    parser.add_argument("--data", required=True, type=Path, help="a LoCoMo JSON file (e.g. locomo_dev.json)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/retrieval"), help="folder for JSON, table and plot")
    parser.add_argument("--limit", type=int, default=None, help="only the first N conversations")
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS), help="the k of recall@k (default 1 5 10 25)")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; print the markdown report. Returns the exit status."""
    result = run_retrieval_bench(args.data, args.out, limit_conversations=args.limit, ks=args.ks)
    print(render_markdown(result), end="")
    print(f"wrote {Path(args.out) / 'retrieval.json'}, retrieval.md, retrieval.png")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m memos.bench.retrieval", description=__doc__.split("\n")[0])
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
