"""How the ``memos`` command shows jobs and policy runs to a person: tables with local times and durations, never
epoch floats (``--json`` keeps the machine form). Rendered with rich; plain text when stdout is not a terminal."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from memos.types import Job


def _when(value: datetime | float | None) -> str:
    """A local wall-clock time (with the date when it is not today)."""
    if value is None:
        return "-"
    at = datetime.fromtimestamp(value, UTC) if isinstance(value, int | float) else value
    local = at.astimezone()
    today = datetime.now().astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M:%S")


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min"


def _table(title: str, *columns: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def jobs_table(jobs: Iterable[Job]) -> Any:
    table = _table("jobs", "id", "op", "state", "progress", "loss", "by", "memories", "target", "rule", "started",
                   "took", "error")
    for job in jobs:
        progress = f"{job.phase} {job.step}/{job.total}".strip() if job.total else job.phase or "-"
        end = job.ended_at or job.updated_at
        table.add_row(
            job.id, job.op, job.state, progress, "-" if job.loss is None else f"{job.loss:.3f}", job.principal,
            ", ".join(job.memory_ids) or "-", job.target or "-", job.rule or "-", _when(job.started_at),
            _seconds((end - job.started_at).total_seconds()), job.error or "",
        )
    return table


def policy_runs_table(reports: Iterable[dict[str, Any]]) -> Any:
    """One row per action of each run (a run that planned nothing is one row saying so)."""
    table = _table("policy runs", "policy", "at", "took", "rule", "op", "cube", "memories", "outcome", "detail")
    for report in reports:
        head = [report["policy"], _when(report["at"]), _seconds(report["duration_s"])]
        outcomes = report.get("outcomes") or []
        if not outcomes:
            table.add_row(*head, "-", "-", "-", "-", "nothing to do", f"{report['planned']} planned")
        for i, o in enumerate(outcomes):
            table.add_row(*(head if i == 0 else ["", "", ""]), o["rule"], o["op"], o.get("cube") or "-",
                          ", ".join(o["memories"]), o["outcome"], o["detail"])
    return table


def policies_table(policies: Iterable[dict[str, Any]]) -> Any:
    """The loaded policies (``PolicyRunner.loaded``): an edit on disk not loaded yet says so."""
    table = _table("loaded policies", "policy", "file", "sha256 (loaded)", "on disk", "schedule", "paused",
                   "last run")
    for p in policies:
        disk = "differs from disk: 'memos policy reload'" if p["differs_from_disk"] else "same"
        schedule = f"every {_seconds(p['every_s'])}" if p.get("every_s") else f"cron {p.get('cron')}"
        last = "-" if p.get("last_run_at") is None else (
            f"{_when(p['last_run_at'])}" + (f", {p['last_run_failed']} failed" if p.get("last_run_failed") else ""))
        table.add_row(p["name"], p.get("source") or "-", p.get("sha256") or "-", disk, schedule,
                      ", ".join(p.get("paused") or ()) or "-", last)
    return table


def show(renderable: Any, *, empty: str | None = None) -> None:
    """Print a table: as wide as the terminal, or 160 columns into a file or a pipe (no colour codes there); a
    table without rows prints ``empty`` instead, when given."""
    from rich.console import Console

    if empty is not None and getattr(renderable, "row_count", 1) == 0:
        print(empty)
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160, color_system=None)
    console.print(renderable)
