"""Serving memos: ``serve`` (the HTTP API, MCP over HTTP), ``mcp`` (stdio), and ``keys add|revoke``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from memos.cli import common
from memos.cli.common import settings_of


def _keys_path(args: argparse.Namespace) -> Path:
    return Path(args.keys).expanduser() if args.keys else settings_of(args).home / "keys.yaml"


def cmd_serve(args: argparse.Namespace) -> int:
    from memos.server.http import check_binding, serve
    from memos.server.keys import KeyFile

    try:
        check_binding(args.host, tls_cert=args.tls_cert, tls_key=args.tls_key, allow_insecure=args.insecure)
        keys = KeyFile(_keys_path(args))
        with common.open_runtime(args) as runtime:
            lock = getattr(getattr(getattr(runtime.transport, "service", None), "kernel", None), "home_lock", None)
            if lock is not None:  # this process owns the home: say where it answers, for the next opener's error
                local = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104 (a wildcard bind)
                lock.set_endpoint(f"{'https' if args.tls_cert else 'http'}://{local}:{args.port}")
            serve(
                runtime.transport, keys, host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                allow_insecure=args.insecure, max_body_bytes=args.max_body, mcp=args.mcp, mcp_default_cube=args.cube,
            )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    import os

    from memos.server.keys import load_keys
    from memos.server.mcp import run_stdio, stdio_principal

    try:
        principal = stdio_principal(load_keys(_keys_path(args)), os.environ.get("MEMOS_API_KEY"))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with common.open_runtime(args) as runtime:
        run_stdio(runtime.transport, principal, default_cube=args.cube)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from memos.server.keys import add_key, hash_key, revoke_keys, superuser_warning

    path = _keys_path(args)
    try:
        if args.keys_command == "add":
            warning = superuser_warning(args.principal, settings_of(args).superusers)
            if warning:
                print(warning, file=sys.stderr)
            key = add_key(path, args.principal)
            print(key)
            print(f"a key for {args.principal}, shown once; {path} keeps only its sha256 {hash_key(key)}", file=sys.stderr)
        else:
            print(f"revoked {revoke_keys(path, args.principal)} key(s) of {args.principal} in {path}")
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="the HTTP API (and MCP at /mcp with --mcp), for the principals of API keys")
    p.add_argument("--keys", help="keys file, sha256(key) -> principal (default: <home>/keys.yaml)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tls-cert", help="PEM certificate (chain) for HTTPS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without TLS (TLS proxy in front)")
    p.add_argument("--max-body", type=int, default=1024 * 1024, help="largest request body in bytes (default 1 MiB)")
    p.add_argument("--mcp", action="store_true", help="also serve MCP (streamable HTTP) at /mcp")
    p.add_argument("--cube", help="the MCP tools' default cube")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("mcp", help="an MCP server on stdin/stdout, acting as the principal of $MEMOS_API_KEY")
    p.add_argument("--keys", help="keys file (default: <home>/keys.yaml)")
    p.add_argument("--cube", help="the tools' default cube")
    p.set_defaults(fn=cmd_mcp)

    keys = sub.add_parser("keys", help="API keys for 'memos serve' and 'memos mcp'")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    for name, help_ in [("add", "make a key for a principal and print it (once)"),
                        ("revoke", "remove every key of a principal (a running server stops accepting them)")]:
        p = keys_sub.add_parser(name, help=help_)
        p.add_argument("principal")
        p.add_argument("--keys", help="keys file (default: <home>/keys.yaml)")
        p.set_defaults(fn=cmd_keys)
