"""`memos down` stops only the processes `memos up` started and their descendants (issue 13: it killed every process
whose command line named the session, e.g. a `tail -f` of a session log, or a Prometheus started as
docs/operations.md says). No Ray here: stand-in processes named like a session's."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from memos.hosting.ray_host import session_processes, stop_processes

SESSION = "/tmp/ray/session_2026-12-05_21-00-00_000000_4242"
# A stand-in for a Ray component: names the session and starts a child that does not (as raylet starts workers).
COMPONENT = ("import subprocess, sys, time\n"
             "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
             "time.sleep(120)\n")
SLEEPER = "import time; time.sleep(120)"


@pytest.fixture
def spawned():
    procs = []

    def spawn(*args):
        proc = subprocess.Popen([sys.executable, "-c", *args])
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else ():
            child.kill()
        proc.kill()
        proc.wait(timeout=30)


def wait_for_children(pid, n, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(pid).children(recursive=True)
        if len(children) >= n:
            return children
        time.sleep(0.05)
    raise AssertionError("the stand-in component did not start its child")


def test_down_stops_what_up_recorded_and_its_descendants_and_nothing_else(spawned):
    before_up = spawned(SLEEPER, f"--log={SESSION}/logs/old.out")  # names the session, older than `up`
    time.sleep(1.2)
    began = time.time()
    component = spawned(COMPONENT, f"--session-dir={SESSION}")
    [worker] = wait_for_children(component.pid, 1)
    recorded = session_processes(SESSION, None, since=began)  # what `memos up` writes into cluster.json
    assert {p["pid"] for p in recorded} == {component.pid, worker.pid}
    tail = spawned(SLEEPER, f"{SESSION}/logs/raylet.out")  # `tail -f` of a session log, after `up`

    stopped = stop_processes(recorded, timeout=5)

    assert set(stopped) == {component.pid, worker.pid}
    assert component.wait(timeout=10) is not None and gone(worker)
    assert tail.poll() is None and before_up.poll() is None  # they only name the session


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # killed, not yet reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def test_a_recorded_pid_now_used_by_another_process_is_left_alone(spawned):
    other = spawned(SLEEPER)
    stale = [{"pid": other.pid, "create_time": psutil.Process(other.pid).create_time() - 3600, "name": "raylet"}]
    assert stop_processes(stale, timeout=1) == []
    assert other.poll() is None
