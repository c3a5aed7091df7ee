"""What every ``memos`` command shares: the default principal, JSON output, settings, opening a runtime, hints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from memos.config import Settings
from memos.errors import MemosError

DEFAULT_PRINCIPAL = "user:cli"
#: Commands that need the model host (serve exposes them all); the others open the data dir without loading it.
MODEL_COMMANDS = frozenset({"migrate", "distill", "reevaluate", "context", "generate", "serve"})


def print_json(obj: Any) -> None:
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump(mode="json")
    elif isinstance(obj, tuple | list):
        obj = [o.model_dump(mode="json") if hasattr(o, "model_dump") else o for o in obj]
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def settings_of(args: argparse.Namespace) -> Settings:
    return Settings.from_env(home=Path(args.home).expanduser() if getattr(args, "home", None) else None)


def open_runtime(args: argparse.Namespace, *, mode: str = "local") -> Any:
    """A runtime for one CLI command: the running cluster if any; else the `memos serve` that owns the data dir,
    over HTTP, when $MEMOS_API_KEY is set; else the kernel in this process (which fails with ``DataDirInUse``,
    naming the owner, if another process owns the data dir)."""
    from memos.hosting.ray_host import cluster_info
    from memos.runtime import Runtime

    settings = settings_of(args)
    if cluster_info(settings) is not None:
        return Runtime.start(settings, mode="cluster")
    # serve owns the home itself; doctor and policy need the kernel's own methods, which HTTP does not carry.
    served = _served(settings) if args.command not in ("serve", "doctor", "policy") else None
    if served is not None:
        return served
    uses_model = args.command in MODEL_COMMANDS or (args.command == "ingest" and settings.llm == "local")
    if not uses_model:  # loading the model takes seconds; most commands never touch it
        settings = settings.model_copy(update={"model": None})
    # The data dir's lock names this command to whoever opens the home meanwhile (memos.storage.owner).
    return Runtime.start(settings, mode="inprocess" if mode == "local" else mode,  # type: ignore[arg-type]
                         owner=f"memos {args.command}")


def _served(settings: Settings) -> Any:
    """A runtime over HTTP to the `memos serve` that owns ``settings.home`` (it records its URL in the data dir's
    lock, memos.storage.owner), acting with $MEMOS_API_KEY ($MEMOS_CA_FILE for a private CA); None without a key or
    a serving owner."""
    import os

    from memos.storage.owner import read_owner

    owner, key = read_owner(settings.home), os.environ.get("MEMOS_API_KEY")
    if not owner or not owner.get("endpoint") or not key:
        return None
    from memos.runtime import Runtime
    from memos.transports.http import HttpTransport

    transport = HttpTransport(owner["endpoint"], key, ca_file=os.environ.get("MEMOS_CA_FILE") or None)
    return Runtime(settings, transport, mode="http")


def client(runtime: Any, principal: str) -> Any:
    """The client a command acts through: over HTTP the key decides who acts, unless ``--as`` named someone (then
    the server checks that the key is theirs)."""
    from memos.client import Memos

    if getattr(runtime, "mode", None) == "http" and principal == DEFAULT_PRINCIPAL:
        return Memos(runtime.transport)
    return runtime.client(principal)


def add_principal(parser: argparse.ArgumentParser) -> None:
    """``--as PRINCIPAL``: who a memory command acts as."""
    parser.add_argument("--as", dest="principal", default=DEFAULT_PRINCIPAL,
                        help=f"principal to act as (default {DEFAULT_PRINCIPAL})")


def hint(exc: MemosError, principal: str | None) -> str | None:
    """What to try when the default principal is refused: it is an ordinary principal with no rights of its own."""
    if principal != DEFAULT_PRINCIPAL or exc.code not in ("not_found", "denied"):
        return None
    return (f"commands act as {DEFAULT_PRINCIPAL}, which sees only the cubes it created or was granted; act as another "
            f"principal with --as (e.g. --as system, the superuser), or have the cube's admin run "
            f"'memos cube grant CUBE {DEFAULT_PRINCIPAL} read'")

