"""Reading memos' metrics from Ray's metrics export (Prometheus text), as the integration tests do."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every series of metric ``name``."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            out[labels] = float(value)
    return out


def scrape_until(url: str, done: Callable[[str], bool], timeout: float) -> str:
    """The export's text once ``done(text)`` holds, or the last text read when ``timeout`` seconds have passed.
    Gauges are snapshots refreshed every few seconds, and Ray exports on its own period: wait for the values."""
    deadline, text = time.time() + timeout, ""
    while time.time() < deadline:
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        if done(text):
            break
        time.sleep(0.5)
    return text
