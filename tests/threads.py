"""Helpers for tests that drive the kernel from worker threads (a held job, a second caller)."""

from __future__ import annotations

import threading
import time


def in_thread(fn):
    """Run ``fn`` in a thread; returns a dict that gets ``result`` or ``error`` when it ends, and the thread."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except Exception as exc:  # noqa: BLE001 -- a worker thread hands its failure to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return out, thread


def wait_for(predicate, timeout=10.0):
    """Poll ``predicate`` until it returns something truthy (returned), or fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value
