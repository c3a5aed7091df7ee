"""Memory commands, one syscall each: ``cubes``, ``cube create|grant|revoke``, ``write``, ``read``, ``search``,
``history``, and ``ingest`` (a conversation file into memories, with each decision shown)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from memos.cli import common
from memos.cli.common import add_principal, print_json
from memos.errors import InvalidSyscall


def cmd_memory(args: argparse.Namespace) -> int:
    with common.open_runtime(args) as runtime:
        mem = common.client(runtime, args.principal)
        if args.command == "cubes":
            print_json(mem.cubes())
        elif args.command == "write":
            print_json(mem.write(args.cube, args.content, tags=args.tag or ()))
        elif args.command == "read":
            print_json(mem.read(args.id, args.version))
        elif args.command == "search":
            print_json(mem.search(args.query, args.cube, k=args.k))
        elif args.command == "history":
            print_json(mem.history(args.id))
        elif args.command == "ingest":
            return _ingest(mem, args)
    return 0


def cmd_cube(args: argparse.Namespace) -> int:
    with common.open_runtime(args) as runtime:
        mem = common.client(runtime, args.principal)
        if args.cube_command == "create":
            print_json(mem.create_cube(args.cube, args.description, exist_ok=args.exist_ok))
        elif args.cube_command == "grant":
            print_json(mem.grant(args.cube, args.grantee, args.right))
        elif args.cube_command == "move":
            move = getattr(runtime.transport, "move_cube", None)
            if move is None:
                raise InvalidSyscall("this data dir is not sharded: 'memos cube move' needs 'memos up --shards N'")
            print_json(move(args.cube, args.shard))
        else:
            print_json(mem.revoke(args.cube, args.grantee))
    return 0


def _ingest(mem: Any, args: argparse.Namespace) -> int:
    """``memos ingest CUBE --file conversation.json``: one line per decision (action, memory, text, why, refs)."""
    try:
        data = json.loads(args.file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidSyscall(f"{args.file}: cannot read a JSON conversation: {exc}") from exc
    messages = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(messages, list):
        raise InvalidSyscall(f"{args.file}: expected a list of messages or {{\"messages\": [...]}}")
    if not args.dry_run:
        mem.create_cube(args.cube, exist_ok=True)  # a conversation's first ingest makes its cube
    result = mem.ingest(args.cube, messages, dry_run=args.dry_run)
    if args.json:
        print_json(result)
        return 0
    for d in result.decisions:
        where = f"{d.memory.id} v{d.memory.version}" if d.memory else (f"({d.target.id} v{d.target.version})" if d.target else "-")
        print(f"{d.action.upper():<10} {where:<28} {d.text}")
        print(f"{'':<10} why: {d.reason}; from {', '.join(d.source_refs) or 'no message'}")
    counts = ", ".join(f"{n} {a}" for a, n in result.counts().items())
    print(f"{len(result.decisions)} facts by {result.extractor}: {counts}" + (" (dry run: nothing written)" if result.dry_run else ""))
    return 0


def register(sub: Any) -> None:
    def memory_parser(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        add_principal(p)
        p.set_defaults(fn=cmd_memory)
        return p

    memory_parser("cubes", "list the cubes you may read")
    cube = sub.add_parser("cube", help="create a cube, grant or revoke a right on it, move it to another shard")
    cube_sub = cube.add_subparsers(dest="cube_command", required=True)
    for name, help_ in [("create", "create a cube (you become its admin)"),
                        ("grant", "give a principal a right on a cube (admin)"),
                        ("revoke", "take every right of a principal on a cube (admin)"),
                        ("move", "move a cube and all its data to another kernel shard (sharded data dirs)")]:
        p = cube_sub.add_parser(name, help=help_)
        add_principal(p)
        p.add_argument("cube")
        if name == "create":
            p.add_argument("--description", default="")
            p.add_argument("--exist-ok", action="store_true", help="no error when the cube exists")
        elif name == "move":
            p.add_argument("--shard", type=int, required=True, help="the shard to move it to (0..N-1)")
        else:
            p.add_argument("grantee", metavar="principal")
        if name == "grant":
            p.add_argument("right", choices=["read", "write", "admin"])
        p.set_defaults(fn=cmd_cube)
    p = memory_parser("write", "write a memory")
    p.add_argument("cube")
    p.add_argument("content")
    p.add_argument("--tag", action="append")
    p = memory_parser("read", "read a memory")
    p.add_argument("id")
    p.add_argument("--version", type=int)
    p = memory_parser("search", "hybrid search in a cube")
    p.add_argument("cube")
    p.add_argument("query")
    p.add_argument("-k", type=int, default=5)
    p = memory_parser("ingest", "extract memories from a conversation file into a cube (made if missing); "
                                "show each decision and why")
    p.add_argument("cube")
    p.add_argument("--file", required=True, type=Path,
                   help="JSON: a list of messages {content, speaker?, id?, at?, session?} or {\"messages\": [...]}")
    p.add_argument("--dry-run", action="store_true", help="decide and show, write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p = memory_parser("history", "every version of a memory with provenance")
    p.add_argument("id")
