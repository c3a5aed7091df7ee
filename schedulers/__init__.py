"""memos.schedulers: lifecycle policies in YAML and the pure engine that turns them into syscalls.

Pipeline: a YAML file -> :func:`load_policy` (strict spec, every problem located at ``file:line key.path``) ->
:class:`CompiledPolicy` -> :func:`evaluate` (policy, :class:`KernelSnapshot`, now) -> :class:`PlannedAction` list,
each a syscall or intent tagged with its rule and reason. :func:`explain` renders the same evaluation as a dry run.
Running policies on their schedules is the runtime's job (APScheduler); nothing here keeps time or calls the kernel.
"""

from memos.schedulers.actions import (
    Action,
    BudgetUsage,
    CompressIntent,
    DistillIntent,
    MergeIntent,
    MigrateIntent,
    Plan,
    PlannedAction,
    Skipped,
)
from memos.schedulers.commands import main_check, main_explain
from memos.schedulers.engine import CompiledPolicy, compile_policy, evaluate, plan
from memos.schedulers.explain import explain
from memos.schedulers.loader import Problem, check_files, load_policy, load_spec, parse_spec
from memos.schedulers.retention import RetentionScore, score
from memos.schedulers.snapshot import KernelSnapshot
from memos.schedulers.spec import PolicySpec

__all__ = [
    "Action",
    "BudgetUsage",
    "CompiledPolicy",
    "CompressIntent",
    "DistillIntent",
    "KernelSnapshot",
    "MergeIntent",
    "MigrateIntent",
    "Plan",
    "PlannedAction",
    "PolicySpec",
    "Problem",
    "RetentionScore",
    "Skipped",
    "check_files",
    "compile_policy",
    "evaluate",
    "explain",
    "load_policy",
    "load_spec",
    "main_check",
    "main_explain",
    "parse_spec",
    "plan",
    "score",
]
