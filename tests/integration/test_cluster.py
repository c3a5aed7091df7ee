"""`memos up` / `status` / `down` as a user runs them, and the kernel's metrics on Ray's Prometheus export.

One `memos up` (the ``cluster`` fixture, with the tidy policy loaded) serves the tests that need a running cluster, in
file order: the metrics first (the policy test restarts the kernel actor, which resets its counters), the policy
lifecycle next, and `memos down` last, checked by its own test. A cluster start costs tens of seconds on two cores."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from ray_metrics import metric_values, scrape_until

pytestmark = pytest.mark.integration

DASHBOARD_PORT, METRICS_PORT = 28465, 28466
# The shared cluster's ports: not the ones above, which the taken-port test binds while the cluster runs.
CLUSTER_PORTS = {"MEMOS_DASHBOARD_PORT": "28467", "MEMOS_METRICS_PORT": "28468"}

TIDY = ("name: tidy\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1h}\nrules:\n  - name: archive-all\n"
        "    when: {kind: plaintext}\n    then: archive\n")
HOT = ("name: hot\napplies_to: {cubes: ['team/*']}\nschedule: {every: 1h}\nrules:\n  - name: promote\n"
       "    when: {kind: plaintext, reads: {within: 1h, at_least: 5}}\n    then: {migrate: activation}\n")


def memos(home, *args, timeout=300, **extra_env):
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_DASHBOARD_PORT": str(DASHBOARD_PORT),
           "MEMOS_METRICS_PORT": str(METRICS_PORT), "MEMOS_MODEL": "none", **extra_env}
    return subprocess.run([sys.executable, "-m", "memos.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


class Cluster:
    """A running `memos up` (no model, the tidy policy loaded from ``tidy``) and a process following its raylet log."""

    def __init__(self, root: Path):
        import json

        self.root, self.home, self.tidy, self.hot = root, root / "home", root / "tidy.yaml", root / "hot.yaml"
        self.tidy.write_text(TIDY)
        self.hot.write_text(HOT)
        self.up = self.memos("up")
        assert self.up.returncode == 0, self.up.stdout + self.up.stderr
        self.info = json.loads((self.home / "cluster.json").read_text())
        # Someone follows a session log: `memos down` must leave that process alone (issue 13: it killed it).
        self.tail = subprocess.Popen(["tail", "-f", str(Path(self.info["session_dir"]) / "logs" / "raylet.out")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.down = None

    def memos(self, *args: str, **extra_env) -> subprocess.CompletedProcess:
        return memos(self.home, *args, MEMOS_POLICIES=str(self.tidy), **{**CLUSTER_PORTS, **extra_env})

    def stop(self) -> bool:
        """`memos down`; whether the log follower was still running after it."""
        self.down = self.memos("down")
        survived = self.tail.poll() is None
        self.tail.kill()
        self.tail.wait(timeout=30)
        return survived


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    running = Cluster(tmp_path_factory.mktemp("cluster"))
    yield running
    if running.down is None:  # the last test stops it and checks how; this is for a run that did not get there
        running.stop()


def test_up_status_and_metrics_on_the_ray_export(cluster):
    # `memos up` as a user runs it, in its own process (this test process may already be attached to another Ray),
    # with non-default ports (the defaults may be taken on a developer machine) and no model (not the point here).
    home, info = cluster.home, cluster.info
    assert info["dashboard_url"] == f"http://127.0.0.1:{CLUSTER_PORTS['MEMOS_DASHBOARD_PORT']}"
    assert any(p["name"] == "raylet" for p in info["processes"]), info["processes"]
    status = cluster.memos("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "memos is running" in status.stdout and info["dashboard_url"] in status.stdout
    assert "kernel actor ALIVE" in status.stdout, status.stdout

    assert cluster.memos("write", "--as", "agent:ops", "ops/notes", "x").returncode == 2  # no such cube: typed error
    code = (
        "import os\n"
        "from memos.runtime import Runtime\n"
        "with Runtime.start(mode='cluster') as rt:\n"
        "    c = rt.client('agent:ops'); c.create_cube('ops/notes', exist_ok=True)\n"
        "    for i in range(3): c.write('ops/notes', f'metric note {i}')\n"
        "    c.search('metric note', 'ops/notes')\n"
    )
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_MODEL": "none"}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=180, env=env)

    def writes_and_memories(text: str) -> tuple[dict[str, float], dict[str, float]]:
        writes = {k: v for k, v in metric_values(text, "ray_memos_syscalls_total").items() if 'op="write"' in k}
        return writes, metric_values(text, "ray_memos_memories")

    def refreshed(text: str) -> bool:  # a gauge refresh after the last write, not just any value
        writes, memories = writes_and_memories(text)
        return bool(writes) and any('cube="ops/notes"' in k and v == 3 for k, v in memories.items())

    text = scrape_until(info["metrics_url"], refreshed, timeout=60)
    writes, memories = writes_and_memories(text)
    assert any('outcome="ok"' in k and v >= 3 for k, v in writes.items()), writes
    assert any('outcome="not_found"' in k for k in metric_values(text, "ray_memos_syscalls_total"))
    assert any('cube="ops/notes"' in k and v == 3 for k, v in memories.items()), memories
    assert metric_values(text, "ray_memos_syscall_latency_seconds_count")


def test_a_taken_dashboard_port_is_refused_before_ray_starts_and_leaves_nothing_behind(tmp_path):
    """A taken dashboard port once made `ray start` fail half-way, after it had started the GCS and more. `memos up`
    now checks its ports first: it refuses in memos' terms, names the flag that fixes it, and starts nothing."""
    import psutil

    home = tmp_path / "home"
    # Ray puts its session under $TMPDIR/ray: a fresh, short one tells this test's processes apart.
    ray_tmp = Path(tempfile.mkdtemp(prefix="memos-up-", dir="/tmp"))
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", DASHBOARD_PORT))
            taken.listen()
            up = memos(home, "up", TMPDIR=str(ray_tmp))
        assert up.returncode == 2, up.stdout + up.stderr
        assert f"dashboard port {DASHBOARD_PORT}" in up.stderr and "--dashboard-port" in up.stderr, up.stderr
        assert not list(ray_tmp.glob("ray/session_*")), "ray start ran although a port was taken"
        assert not (home / "cluster.json").exists()
        left = [" ".join(p.info["cmdline"] or ())[:200] for p in psutil.process_iter(["cmdline"])
                if str(ray_tmp) in " ".join(p.info["cmdline"] or ())]
        assert not left, left
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_policy_lifecycle_on_a_running_cluster_and_a_pause_through_a_kernel_restart(cluster, tmp_path):
    """memos up with MEMOS_POLICIES -> policy list / edit on disk / status / reload / apply / pause / run -> SIGKILL of
    the kernel actor (it restarts and reopens the home: the rule is still paused, the applied policy loaded) -> resume
    / run (-> memos down: the last test), all through the real CLI in its own processes."""
    import json
    import re
    import signal
    import time

    tidy, hot = cluster.tidy, cluster.hot

    def ok(*args: str) -> str:
        result = cluster.memos(*args, COLUMNS="200")
        assert result.returncode == 0, f"memos {' '.join(args)}:\n{result.stdout}{result.stderr}"
        return result.stdout

    def listed() -> dict[str, dict]:
        return {p["name"]: p for p in json.loads(ok("policy", "list", "--json"))}

    def run_tidy() -> list[str]:
        (report,) = json.loads(ok("policy", "run", "tidy", "--json"))
        return [o["outcome"] for o in report["outcomes"]]

    (loaded,) = listed().values()
    assert loaded["name"] == "tidy" and not loaded["differs_from_disk"] and loaded["every_s"] == 3600.0
    tidy.write_text(TIDY.replace("every: 1h", "every: 30m"))
    assert listed()["tidy"]["differs_from_disk"]
    assert "differs from disk" in ok("status")
    ok("policy", "reload")
    reloaded = listed()["tidy"]
    assert reloaded["every_s"] == 1800.0 and not reloaded["differs_from_disk"]
    ok("policy", "apply", str(hot))
    assert sorted(listed()) == ["hot", "tidy"]

    ok("cube", "create", "--as", "system", "team/a")
    ok("write", "--as", "system", "team/a", "a note the tidy policy would archive")
    assert "paused rules: tidy/archive-all" in ok("policy", "pause", "tidy/archive-all")
    assert run_tidy() == ["not_executed"]

    old_pid = int(re.search(r"kernel pid (\d+)", ok("status")).group(1))
    os.kill(old_pid, signal.SIGKILL)  # the supervised actor restarts and reopens the home
    deadline = time.monotonic() + 120
    while True:
        status = cluster.memos("status")
        found = re.search(r"kernel pid (\d+)", status.stdout)
        if status.returncode == 0 and found and int(found.group(1)) != old_pid:
            break
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(0.5)
    after = listed()  # kept in the home, not in the dead process: the pause, and the policy applied by hand
    assert sorted(after) == ["hot", "tidy"] and after["tidy"]["paused"] == ["tidy/archive-all"]
    assert run_tidy() == ["not_executed"]
    ok("policy", "resume", "tidy/archive-all")
    assert listed()["tidy"]["paused"] == [] and run_tidy() == ["ok"]
    bad = cluster.memos("policy", "pause", "tidy/nope")
    assert bad.returncode == 2 and "loaded rules: hot/promote, tidy/archive-all" in bad.stderr
    report = ok("report", "--out", str(tmp_path / "charts"))  # the charts, read from the running cluster
    assert all((tmp_path / "charts" / f).exists() for f in ("migrations.png", "syscall_p95.png", "index.html"))
    assert f"{tmp_path / 'charts' / 'distill_loss.png'}: 0 point(s)" in report


def test_down_stops_the_cluster_and_only_what_it_started(cluster):
    """Last in this module: `memos down` on the shared cluster. It leaves a process that follows a session log alone
    (issue 13: it killed it), and afterwards status and the policy commands say that none is running. What was
    acknowledged before it is on disk after it: a write (SQLite and its Chroma entry) and the reads of it counted in
    the kernel's memory (written in batches; `memos down` closes each kernel before it stops a process, which writes
    the pending ones) - what the next `memos up` opens, here opened in-process."""
    env = {**os.environ, "MEMOS_HOME": str(cluster.home), "MEMOS_MODEL": "none"}
    acked = (
        "from memos.runtime import Runtime\n"
        "with Runtime.start(mode='cluster') as rt:\n"
        "    c = rt.client('agent:ops'); c.create_cube('ops/durable', exist_ok=True)\n"
        "    m = c.write('ops/durable', 'the harbour crane is inspected every tuesday')\n"
        "    for _ in range(5): c.read(m.id)\n"
        "    print(m.id)\n"
    )
    made = subprocess.run([sys.executable, "-c", acked], capture_output=True, text=True, timeout=180, env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    memory_id = made.stdout.split()[-1]

    tail_survived = cluster.stop()
    assert cluster.down.returncode == 0 and "memos is down" in cluster.down.stdout, cluster.down.stderr
    assert tail_survived, "memos down killed a process it did not start"
    reopened = (
        "from memos.runtime import Runtime\n"
        "with Runtime.start(mode='inprocess') as rt:\n"
        "    c = rt.client('agent:ops')\n"
        f"    print(c.read({memory_id!r}).reads)\n"
        "    print([h.memory.id for h in c.search('harbour crane inspection', 'ops/durable')])\n"
    )
    after = subprocess.run([sys.executable, "-c", reopened], capture_output=True, text=True, timeout=180, env=env)
    assert after.returncode == 0, after.stderr[-3000:]
    reads, hits = after.stdout.strip().splitlines()[-2:]
    assert reads == "6", after.stdout  # the 5 reads before `memos down`, and this one
    assert memory_id in hits, after.stdout
    assert memos(cluster.home, "status", **CLUSTER_PORTS).returncode == 1
    stopped = memos(cluster.home, "policy", "pause", "tidy/archive-all", **CLUSTER_PORTS)
    assert stopped.returncode == 1 and "none is running" in stopped.stderr
