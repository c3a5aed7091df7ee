"""Retrieval metrics: recall@k of gold evidence ids, their averages per group, and latency percentiles.

recall@k of one question = |evidence ∩ top-k of the ranking| / |evidence|: a question with two evidence turns, one
of them retrieved, scores 0.5. Averages are plain means over questions (every question weighs the same).
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def recall_at_k(ranked: Sequence[str], evidence: Iterable[str], k: int) -> float:
    """Fraction of ``evidence`` found in ``ranked[:k]``. Duplicates in ``ranked`` count once.

    Raises:
        ValueError: ``evidence`` is empty (recall is undefined) or ``k`` is below 1.
    """
    gold = set(evidence)
    if not gold:
        raise ValueError("recall@k needs at least one evidence id")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return len(gold & set(ranked[:k])) / len(gold)


def recall_table(
    rankings: Sequence[tuple[Sequence[str], Iterable[str]]], ks: Sequence[int]
) -> dict[str, float]:
    """Mean recall@k over (ranking, evidence) pairs, keyed ``"R@<k>"``. Empty input gives NaN for each k."""
    pairs = [(ranked, tuple(evidence)) for ranked, evidence in rankings]
    return {
        f"R@{k}": (sum(recall_at_k(r, e, k) for r, e in pairs) / len(pairs)) if pairs else math.nan for k in ks
    }


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (numpy's default).

    Raises:
        ValueError: ``values`` is empty or ``q`` is outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def machine_at_end() -> dict[str, Any]:
    """The ``environment`` block of a throughput bench's report: Python, CPUs and the load average as it ends."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_end": [round(x, 2) for x in os.getloadavg()]}


def write_report(out: Path, stem: str, report: dict[str, Any], render: Callable[[dict[str, Any]], str]) -> None:
    """``<stem>.json`` (the report) and ``<stem>.md`` (``render(report)``) under ``out``."""
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / f"{stem}.md").write_text(render(report), encoding="utf-8")
