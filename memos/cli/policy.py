"""``memos policy check | explain | run | list | apply | reload | pause | resume``: lifecycle policies.

``list``, ``apply``, ``reload``, ``pause`` and ``resume`` act on the scheduler of the running ``memos up`` cluster
(its kernel actor reads the files); without a cluster, ``list`` shows what this process loads from
``MEMOS_POLICIES`` and the others refuse, since their change would end with the command."""

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
    if args.policy_command in ("list", "apply", "reload", "pause", "resume"):
        return _lifecycle(args)
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


def _lifecycle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from memos.cli.tables import policies_table, show

    command = args.policy_command
    arg = getattr(args, "file", None) or getattr(args, "rule", None)
    if command == "apply":
        arg = str(Path(arg).expanduser().resolve())
    with common.open_runtime(args) as runtime:
        if command != "list" and runtime.mode != "cluster":
            print(f"'memos policy {command}' changes the scheduler of a running 'memos up' cluster, and none is "
                  "running: start one (with MEMOS_POLICIES) or edit MEMOS_POLICIES for the next start", file=sys.stderr)
            return 1
        answer = runtime.policy_admin(command, arg)
    if command in ("pause", "resume"):
        print(f"{arg}: {'paused' if command == 'pause' else 'resumed'}; paused rules: {', '.join(answer) or 'none'}")
        return 0
    loaded = [answer] if command == "apply" else answer
    if getattr(args, "json", False):
        print_json(loaded)
    elif not loaded:
        print("no policies are loaded (MEMOS_POLICIES, or 'memos policy apply FILE' on a running cluster)")
    else:
        show(policies_table(loaded))
    return 0


def _duration(text: str) -> float:
    from memos.schedulers.units import parse_duration

    return parse_duration(text)


def register(sub: Any) -> None:
    policy = sub.add_parser("policy", help="lifecycle policies: check, explain (dry run), run now, list, apply, "
                            "reload, pause, resume")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    p = policy_sub.add_parser("check", help="validate policy files (exit 1 on any problem, with file:line key)")
    p.add_argument("files", nargs="+")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("explain", help="what the policies would do now on the kernel's data, and why")
    p.add_argument("files", nargs="+")
    p.add_argument("--after", help="evaluate as if this much time had passed, e.g. 30d")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("list", help="the loaded policies: file hash (and whether the file changed), paused rules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("apply", help="load or replace a policy in the running scheduler now (validated first)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("reload", help="re-read every loaded policy file (all validated before any changes)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_policy)
    for name, help_ in (("pause", "stop executing a rule (policy/rule) until resumed"), ("resume", "execute it again")):
        p = policy_sub.add_parser(name, help=help_)
        p.add_argument("rule", help="policy/rule, e.g. default/promote-hot")
        p.set_defaults(fn=cmd_policy)
    p = policy_sub.add_parser("run", help="evaluate the kernel's loaded policies now and execute their actions")
    p.add_argument("name", nargs="?")
    p.add_argument("--json", action="store_true", help="the run reports as JSON (times as epoch seconds)")
    p.set_defaults(fn=cmd_policy)
