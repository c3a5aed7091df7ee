"""The ``memos`` command.

    memos up | status | down           a local Ray head with the dashboard and the kernel actor
    memos run FILE                     run a workflow (a module with ``run(runtime)``), print its summary
    memos cubes | search | read | history | write | stats | events | audit    one syscall each
    memos cube create | grant | revoke                                       cubes and their rights
    memos ingest CUBE --file conversation.json                               extract memories, show the decisions
    memos migrate | context | generate                                       activation memory and the model
    memos distill | reevaluate | jobs | cancel                               parametric memory, long operations
    memos policy check | explain | run                                       lifecycle policies
    memos top | events --follow                                              live views
    memos report --out DIR [--since 24h]                                     charts (PNG + HTML), no Grafana needed
    memos doctor [--repair]            check SQLite and the vector index; rebuild the index from SQLite
    memos serve [--mcp] [--tls-cert C --tls-key K]   the HTTP API (and MCP over HTTP) for API keys
    memos mcp                          an MCP server on stdio, acting as the key in $MEMOS_API_KEY
    memos keys add|revoke PRINCIPAL    API keys, stored as hashes in <home>/keys.yaml
    memos bench retrieval | extraction ...   benchmarks (see docs/)

Commands that touch memory go through the running cluster if ``memos up`` started one, else open the data dir in
this process (only one process may own it).

One module per concern, each with its commands and a ``register(sub)`` that adds their parsers: ``cluster`` (up,
status, down, run, doctor), ``memory`` (cubes, cube, write, read, search, history, ingest), ``observe`` (stats,
audit, events, top, jobs, cancel), ``models`` (migrate, distill, reevaluate, context, generate), ``policy``, ``service`` (serve,
mcp, keys), ``bench``, ``report`` (charts); ``common`` holds what they share and ``tables`` how jobs and policy runs
are shown.
"""

from __future__ import annotations

import argparse
import sys

from memos.cli import bench, cluster, memory, models, observe, policy, report, service
from memos.cli.common import DEFAULT_PRINCIPAL, hint
from memos.errors import MemosError

__all__ = ["DEFAULT_PRINCIPAL", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memos", description="memos: a memory operating system for LLM agents")
    parser.add_argument("--home", help="data dir (default: $MEMOS_HOME or ~/.memos)")
    sub = parser.add_subparsers(dest="command", required=True)
    for concern in (cluster, memory, observe, policy, models, service, bench, report):
        concern.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except MemosError as exc:
        print(f"error [{exc.code}]: {exc}", file=sys.stderr)
        advice = hint(exc, getattr(args, "principal", None))
        if advice:
            print(f"hint: {advice}", file=sys.stderr)
        return 2
