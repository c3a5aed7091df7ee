"""``memos report --out DIR [--since 24h]``: the operator's charts, drawn with matplotlib from what memos records, for
a person without Grafana.

Four charts, each a PNG, and ``index.html`` showing them with their figures:

| file | series | recorded by |
|---|---|---|
| ``migrations.png`` | promotions (to activation) and demotions (activation to plaintext) per time bucket | ``migrated`` events |
| ``activation.png`` | activation disk bytes against the budget's limit | ``sampled`` events (``memos.kernel.samples``) |
| ``distill_loss.png`` | each distillation's training loss by step | ``distilled`` events (their ``loss_curve``) |
| ``syscall_p95.png`` | p95 latency (ms) of the busiest syscalls | ``sampled`` events |

Everything is read through the ``events`` syscall, so it works on a running cluster and on a data dir alike; events
with no cube (the samples) are shown to superusers only, so the report acts as ``system`` unless ``--as`` says
otherwise. The functions that turn events into series (``migration_rates``, ``activation_series``, ``loss_curves``,
``p95_series``) are plain and tested on their own.
"""

from __future__ import annotations

import argparse
import html
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from memos.kernel import events as ev

#: Time buckets of the migration chart, smallest first: the smallest that gives at most MAX_BUCKETS bars is used.
BUCKETS_S = (60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0)
MAX_BUCKETS = 60
TYPES = ("migrated", "sampled", "distilled")
#: The busiest ops whose p95 is drawn, and the distillations whose loss curves are (the newest).
TOP_OPS = 6
MAX_CURVES = 10


@dataclass(frozen=True)
class Recorded:
    """One event, typed, with its time (epoch seconds)."""

    at: float
    event: ev.KernelEvent


def read_recorded(client: Any, since_at: float | None = None, types: Sequence[str] = TYPES) -> list[Recorded]:
    """Every event of ``types`` the client may read, oldest first, from ``since_at`` (epoch seconds) on."""
    out: list[Recorded] = []
    seq = 0
    while True:
        page = client.events(seq, limit=1000, types=types)
        for e in page.events:
            at = e.at.timestamp()
            if since_at is None or at >= since_at:
                out.append(Recorded(at, ev.from_record(e.type, e.cube, e.memory_id, e.principal, e.data)))
        if not page.events:
            return out
        seq = page.next_seq


def bucket_for(start: float, end: float) -> float:
    """The smallest bucket of ``BUCKETS_S`` that cuts ``start..end`` into at most ``MAX_BUCKETS``."""
    span = max(end - start, 0.0)
    return next((b for b in BUCKETS_S if span / b < MAX_BUCKETS), BUCKETS_S[-1])


def migration_rates(recorded: Iterable[Recorded], bucket_s: float | None = None) -> list[tuple[float, int, int]]:
    """(bucket start, promotions, demotions) per time bucket, from the first migration's bucket to the last one's
    (empty buckets included). A promotion is a migration to activation; a demotion, activation to plaintext."""
    moves = [(r.at, r.event.to) for r in recorded if isinstance(r.event, ev.Migrated)
             and (r.event.to == "activation" or (r.event.frm, r.event.to) == ("activation", "plaintext"))]
    if not moves:
        return []
    first, last = moves[0][0], moves[-1][0]
    size = bucket_s or bucket_for(first, last)
    start = first - first % size
    promotions: Counter[int] = Counter()
    demotions: Counter[int] = Counter()
    for at, to in moves:
        index = int((at - start) // size)
        (promotions if to == "activation" else demotions)[index] += 1
    count = int((last - start) // size) + 1
    return [(start + i * size, promotions[i], demotions[i]) for i in range(count)]


def activation_series(recorded: Iterable[Recorded]) -> list[tuple[float, int, int | None]]:
    """(time, activation disk bytes, the budget's limit or None) of each sample."""
    return [(r.at, r.event.activation_bytes, r.event.activation_limit) for r in recorded
            if isinstance(r.event, ev.Sampled)]


def p95_series(recorded: Iterable[Recorded], top: int = TOP_OPS) -> dict[str, list[tuple[float, float]]]:
    """op -> [(time, p95 ms)] for the ``top`` ops with the most calls in the last sample."""
    samples = [r for r in recorded if isinstance(r.event, ev.Sampled)]
    if not samples:
        return {}
    counts = samples[-1].event.syscalls  # type: ignore[attr-defined]
    busiest = sorted(counts, key=lambda op: (-counts[op], op))[:top]
    return {op: [(r.at, r.event.p95_ms[op]) for r in samples if op in r.event.p95_ms]  # type: ignore[attr-defined]
            for op in busiest}


def loss_curves(recorded: Iterable[Recorded], newest: int = MAX_CURVES) -> list[tuple[str, list[tuple[int, float]]]]:
    """(label, [(step, loss)]) of the ``newest`` distillations that recorded a loss curve, oldest first; the label
    names the memory, its version, the rule (if a policy ran it) and whether it was adopted."""
    out = []
    for r in recorded:
        e = r.event
        if isinstance(e, ev.Distilled) and e.loss_curve:
            label = f"{e.memory_id} v{e.version}" + (f" ({e.rule})" if e.rule else "") + ("" if e.adopted else " not adopted")
            out.append((label, [(int(s), float(v)) for s, v in e.loss_curve]))
    return out[-newest:]


# ------------------------------------------------------------------------------------------------ drawing

def _when(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def _figure(title: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(9, 4), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title(title)
    axes.grid(alpha=0.3)
    return figure, axes


def _empty(axes: Any, why: str) -> None:
    axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes, wrap=True)
    axes.set_xticks([])
    axes.set_yticks([])


def _dates(figure: Any, axes: Any) -> None:
    import matplotlib.dates as mdates

    axes.xaxis.set_major_formatter(mdates.ConciseDateFormatter(axes.xaxis.get_major_locator()))
    axes.set_xlabel("time (UTC)")


def draw_migrations(rates: list[tuple[float, int, int]], path: Path) -> None:
    figure, axes = _figure("promotions vs demotions")
    if not rates:
        _empty(axes, "no migration to or from activation recorded in this period")
    else:
        size = rates[1][0] - rates[0][0] if len(rates) > 1 else 60.0
        width = size / 86400 * 0.4  # in days, matplotlib's date unit
        import matplotlib.dates as mdates

        xs = [mdates.date2num(_when(at)) for at, _, _ in rates]
        axes.bar([x - width / 2 for x in xs], [p for _, p, _ in rates], width=width, label="promoted (to activation)")
        axes.bar([x + width / 2 for x in xs], [d for _, _, d in rates], width=width, label="demoted (to plaintext)")
        axes.xaxis_date()
        axes.set_ylabel(f"migrations per {_span(size)}")
        axes.legend()
        _dates(figure, axes)
    figure.savefig(path, dpi=100)


def draw_activation(series: list[tuple[float, int, int | None]], path: Path) -> None:
    figure, axes = _figure("activation disk bytes against the budget")
    if not series:
        _empty(axes, "no samples recorded yet (the kernel samples every minute while it runs)")
    else:
        mib = 1024 * 1024
        times = [_when(at) for at, _, _ in series]
        axes.step(times, [b / mib for _, b, _ in series], where="post", label="used")
        limits = [(t, lim / mib) for t, (_, _, lim) in zip(times, series, strict=True) if lim is not None]
        if limits:
            axes.step([t for t, _ in limits], [v for _, v in limits], where="post", linestyle="--", color="red",
                      label="limit (activation_disk_bytes)")
        axes.set_ylabel("MiB")
        axes.set_ylim(bottom=0)
        axes.legend()
        _dates(figure, axes)
    figure.savefig(path, dpi=100)


def draw_losses(curves: list[tuple[str, list[tuple[int, float]]]], path: Path) -> None:
    figure, axes = _figure("distillation training loss")
    if not curves:
        _empty(axes, "no distillation with a recorded loss curve in this period")
    else:
        for label, curve in curves:
            axes.plot([s for s, _ in curve], [v for _, v in curve], label=label)
        axes.set_xlabel("step")
        axes.set_ylabel("loss")
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)


def draw_p95(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    figure, axes = _figure("syscall p95 latency")
    if not series:
        _empty(axes, "no samples recorded yet (the kernel samples every minute while it runs)")
    else:
        for op, points in series.items():
            axes.plot([_when(at) for at, _ in points], [v for _, v in points], marker=".", label=op)
        axes.set_ylabel("p95 (ms, last calls of each op)")
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="small")
        _dates(figure, axes)
    figure.savefig(path, dpi=100)


def _span(seconds: float) -> str:
    for unit, size in (("week", 7 * 86400), ("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return unit if n == 1 else f"{n} {unit}"
    return f"{seconds:g} s"


@dataclass(frozen=True)
class Chart:
    file: str
    title: str
    points: int
    note: str


def write_report(recorded: list[Recorded], out: Path, *, since_text: str | None = None) -> list[Chart]:
    """Draw the four charts of ``recorded`` into ``out`` (created if needed) and ``index.html`` showing them."""
    out.mkdir(parents=True, exist_ok=True)
    rates = migration_rates(recorded)
    activation = activation_series(recorded)
    curves = loss_curves(recorded)
    p95 = p95_series(recorded)
    draw_migrations(rates, out / "migrations.png")
    draw_activation(activation, out / "activation.png")
    draw_losses(curves, out / "distill_loss.png")
    draw_p95(p95, out / "syscall_p95.png")
    charts = [
        Chart("migrations.png", "Promotions vs demotions", len(rates),
              f"{sum(p for _, p, _ in rates)} promotions, {sum(d for _, _, d in rates)} demotions"),
        Chart("activation.png", "Activation disk bytes against the budget", len(activation),
              f"last: {activation[-1][1]:,} bytes" + (f" of {activation[-1][2]:,}" if activation[-1][2] else "")
              if activation else "no samples"),
        Chart("distill_loss.png", "Distillation loss curves", len(curves),
              f"{len(curves)} distillation(s)"),
        Chart("syscall_p95.png", "Syscall p95 over time", sum(len(v) for v in p95.values()),
              ", ".join(f"{op} {pts[-1][1]:g} ms" for op, pts in p95.items()) or "no samples"),
    ]
    _write_html(out / "index.html", charts, since_text)
    return charts


def _write_html(path: Path, charts: list[Chart], since_text: str | None) -> None:
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    period = f"the last {since_text}" if since_text else "everything recorded"
    body = "\n".join(
        f"<h2>{html.escape(c.title)}</h2><p>{html.escape(c.note)}</p><img src=\"{c.file}\" alt=\"{html.escape(c.title)}\">"
        for c in charts
    )
    path.write_text(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>memos report</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:auto}img{max-width:100%}</style></head>\n"
        f"<body><h1>memos report</h1><p>{html.escape(period)}, made {made}</p>\n{body}\n</body></html>\n",
        encoding="utf-8",
    )


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from memos.cli import common
    from memos.schedulers.units import parse_duration

    since_at = time.time() - parse_duration(args.since) if args.since else None
    with common.open_runtime(args) as runtime:
        recorded = read_recorded(common.client(runtime, args.principal), since_at)
    out = Path(args.out).expanduser()
    charts = write_report(recorded, out, since_text=args.since)
    for chart in charts:
        print(f"{out / chart.file}: {chart.points} point(s); {chart.note}")
    print(f"{out / 'index.html'}: the four charts on one page")
    return 0


def _duration_text(text: str) -> str:
    from memos.schedulers.units import parse_duration

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def register(sub: Any) -> None:
    p = sub.add_parser("report", help="charts of migrations, activation bytes vs budget, distillation loss and "
                       "syscall p95, as PNGs and one HTML page (matplotlib; no Grafana needed)")
    p.add_argument("--out", required=True, help="directory to write the PNGs and index.html into (created)")
    p.add_argument("--since", type=_duration_text,
                   help="only what was recorded in this last period, e.g. 24h or 7d (default: everything)")
    p.add_argument("--as", dest="principal", default="system",
                   help="principal to read as (default system: the samples are shown to superusers only)")
    p.set_defaults(fn=cmd_report)
