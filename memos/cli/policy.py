"""``memos policy check | explain | run``: lifecycle policies."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from memos.cli import common
from memos.cli.common import print_json


def cmd_policy(args: argparse.Namespace) -> int:
    from memos.schedulers.commands import main_check, main_explain
    from memos.schedulers.snapshot import KernelSnapshot
    from memos.syscalls import Snapshot

    if args.policy_command == "check":
        return main_check(args.files)
    if args.policy_command == "run":
        with common.open_runtime(args) as runtime:
            reports = runtime.run_policy(args.name)
        if not reports:
            print("no policies are loaded (Settings.policies / MEMOS_POLICIES)", file=sys.stderr)
            return 1
        if args.json:
            print_json(reports)
        else:
            from memos.cli.tables import policy_runs_table, show

            show(policy_runs_table(reports))
        return 0
    # explain: a dry run on the kernel's current state (read through the snapshot syscall, as the scheduler does)
    with common.open_runtime(args) as runtime:
        state = runtime.client("system").execute(Snapshot(read_window_s=400 * 86400))
    snapshot = KernelSnapshot(memories=state.memories, read_times=state.read_times, loaded_adapters=state.loaded_adapters)
    now = state.at.timestamp() + (_duration(args.after) if args.after else 0.0)
    return main_explain(args.files, snapshot, now)


def _duration(text: str) -> float:
    from memos.schedulers.units import parse_duration

    return parse_duration(text)


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="lifecycle policies: check, explain (dry run), run now")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    p = policy_sub.add_parser("check", help="validate policy files (exit 1 on any problem, with file:line key)")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("explain", help="what the policies would do now on the kernel's data, and why")
    p.add_argument("files", nargs="+")
    p.add_argument("--after", help="evaluate as if this much time had passed, e.g. 30d")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("run", help="evaluate the kernel's loaded policies now and execute their actions")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true", help="the run reports as JSON (times as epoch seconds)")
    p.set_defaults(fn=cmd_policy)
