"""The two policy commands, as functions the CLI calls: ``memos policy check`` and ``memos policy explain``.

They print and return an exit status; they never call ``sys.exit`` so the CLI (and tests) decide what happens next.
Exit statuses: 0 all good, 1 a policy has problems, 2 usage error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TextIO

from memos.errors import PolicyError
from memos.schedulers.explain import explain
from memos.schedulers.loader import check_files, check_warnings, load_policy
from memos.schedulers.snapshot import KernelSnapshot


def main_check(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``memos policy check FILE...``: print every problem (to ``err``) as ``file:line key.path: message``."""
    out, err = out or sys.stdout, err or sys.stderr
    if not argv:
        print("usage: memos policy check FILE...", file=err)
        return 2
    problems = check_files(argv)
    for problem in problems:
        print(problem, file=err)
    warnings = check_warnings(argv)  # also of the rules that parsed in a file with problems: one pass shows all
    for warning in warnings:
        print(f"warning: {warning}", file=err)
    if problems:
        return 1
    noun = "policy" if len(argv) == 1 else "policies"
    print(f"ok: {len(argv)} {noun} valid" + (f", {len(warnings)} warning(s)" if warnings else ""), file=out)
    return 0


def main_explain(
    argv: Sequence[str],
    snapshot: KernelSnapshot,
    now: float | datetime,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``memos policy explain FILE...``: the dry run of each policy on ``snapshot`` at ``now`` (the caller takes the
    snapshot from the kernel). Stops at the first invalid policy, printing its problems to ``err``."""
    out, err = out or sys.stdout, err or sys.stderr
    if not argv:
        print("usage: memos policy explain FILE...", file=err)
        return 2
    for path in argv:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            print(exc, file=err)
            return 1
        print(explain(policy, snapshot, now), file=out, end="")
    return 0
