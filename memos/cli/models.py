"""Commands that use the model host: ``migrate`` (activation memory), ``distill`` and ``reevaluate`` (parametric
memory), ``context`` and ``generate``. Long ones draw their job's progress on stderr; Ctrl-C cancels the job."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from memos.cli import common
from memos.cli.common import add_principal, print_json
from memos.errors import MemosError


def cmd_models(args: argparse.Namespace) -> int:
    with common.open_runtime(args) as runtime:
        mem = common.client(runtime, args.principal)
        if args.command == "migrate":
            return _follow(mem, lambda: mem.migrate(args.ids, args.to, compression=args.compression, group=args.group),
                           "migrate", args.ids, quiet=args.quiet)
        elif args.command == "distill":
            return _follow(
                mem, lambda: mem.distill(args.ids, args.cube, tags=args.tag or (), allow_untrusted=args.allow_untrusted,
                                         steps=args.steps, replaces=args.replaces),
                "distill", args.ids, target=args.replaces, quiet=args.quiet,
            )
        elif args.command == "reevaluate":
            return _follow(mem, lambda: mem.reevaluate(args.id), "reevaluate", [args.id], quiet=args.quiet)
        elif args.command == "context":
            plan = mem.assemble_context(args.query, args.cube, token_budget=args.budget)
            print_json(plan)
            _warn(plan.warnings)
        elif args.command == "generate":
            result = mem.generate(args.prompt, cubes=args.cube or (), memory=args.memory or (),
                                  max_new_tokens=args.max_new_tokens, token_budget=args.budget)
            print_json(result)
            _warn(result.plan.warnings if result.plan else ())
    return 0


def _warn(warnings: Any) -> None:
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)


def _follow(mem: Any, run: Any, op: str, ids: list[str], *, target: str | None = None, quiet: bool = False) -> int:
    """Run a long syscall in a thread and draw its job's progress on stderr until it returns; print its result.

    Ctrl-C cancels the job (``cancel``): the syscall then fails with ``Cancelled`` and nothing is committed."""
    import threading

    from memos.progress import Progress

    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["result"] = run()
        except BaseException as exc:  # noqa: BLE001 -- handed to the main thread, which reports it like any syscall error
            out["error"] = exc

    thread = threading.Thread(target=work, name=f"memos-{op}", daemon=True)
    started = time.time()
    thread.start()
    bar: Progress | None = None
    job_id: str | None = None
    try:
        while thread.is_alive():
            thread.join(0.5)
            if quiet or not thread.is_alive():
                continue
            job = _our_job(mem, op, ids, target, started, job_id)
            if job is None:
                continue
            job_id = job.id
            if bar is None:
                bar = Progress(f"{op} {job.target or ''}".strip(), total=job.total or None)
            note = f"loss {job.loss:.3f}" if job.loss is not None else ""
            bar.update(job.step, job.total or None, note=note, label=f"{op} {job.phase}".strip())
    except KeyboardInterrupt:
        if job_id is not None:
            mem.cancel(job_id)
            print(f"\ncancelling {job_id} ...", file=sys.stderr, flush=True)
        thread.join()
    if bar is not None:
        bar.close("cancelled" if isinstance(out.get("error"), MemosError) and out["error"].code == "cancelled" else "")
    if "error" in out:
        raise out["error"]
    print_json(out["result"])
    return 0


def _our_job(mem: Any, op: str, ids: list[str], target: str | None, started: float, known: str | None) -> Any:
    """The job this command started: ours by id once known, else the newest running one of ``op`` by this principal
    over exactly ``ids`` (or retraining ``target``) started since the command began."""
    for job in reversed(mem.jobs()):
        if known is not None:
            if job.id == known:
                return job
            continue
        if (job.op == op and job.principal == mem.principal and job.state == "running"
                and job.started_at.timestamp() >= started - 1
                and (set(job.memory_ids) == set(ids) if ids else job.target == target)):
            return job
    return None


def register(sub: Any) -> None:
    def model_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        add_principal(p)
        p.set_defaults(fn=cmd_models)
        return p

    p = model_parser("migrate", "move memories to another kind (activation builds their KV cache)")
    p.add_argument("ids", nargs="+")
    p.add_argument("--to", required=True, choices=["plaintext", "activation"])
    p.add_argument("--compression", help="with --to activation: e.g. int8, snapkv@0.5, int8+sink_window@0.5")
    p.add_argument("--group", help="with --to activation: one episodic cache of the ids in order, named GROUP")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    p = model_parser("distill", "train a LoRA adapter on memories into a parametric memory (progress; Ctrl-C cancels)")
    p.add_argument("ids", nargs="*", help="the memories to distill (none with --replaces: its sources)")
    p.add_argument("--cube", help="where the new parametric memory goes")
    p.add_argument("--replaces", help="retrain this parametric memory from its sources' current versions")
    p.add_argument("--steps", type=int, help="optimiser steps (default: the recipe's epochs)")
    p.add_argument("--tag", action="append")
    p.add_argument("--allow-untrusted", action="store_true", help="also distill untrusted (tool/document) memories")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    p = model_parser("reevaluate", "evaluate an adapter again on the loaded base model (it was trained on another "
                                   "one): its next version says whether it stays adopted (progress; Ctrl-C cancels)")
    p.add_argument("id", help="the parametric memory")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress line on stderr")
    p = model_parser("context", "which memories a query would get within a token budget, and why")
    p.add_argument("cube")
    p.add_argument("query")
    p.add_argument("--budget", type=int, help="tokens the memory may take (default: half the model's context)")
    p = model_parser("generate", "run the model with memory injected")
    p.add_argument("prompt")
    p.add_argument("--cube", action="append", help="choose memory from this cube (repeatable)")
    p.add_argument("--memory", action="append", help="inject exactly this memory id (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--budget", type=int, help="tokens the memory may take (default: half the model's context)")
