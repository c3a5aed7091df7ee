"""Kernel shards on Ray: two shard actors, each owning its own data dir, behind the router; a write to two cubes on
two shards, a search across them, and a shard killed with SIGKILL that Ray restarts with its data.

Its own process: it starts a private Ray, and this test process may be attached to the session's. The hashing
embedder and no model host keep it fast (routing is the point; the real embedder is measured by
``memos bench shards``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = r"""
import json, os, signal, sys, time
from pathlib import Path
from memos.client import Memos
from memos.config import Settings
from memos.hosting.ray_host import start_embedded
from memos.storage.placement import Placement

home = Path(sys.argv[1])
settings = Settings(home=home, model=None, embedder="hashing", sqlite_synchronous="NORMAL",
                    dashboard_port=28365, metrics_export_port=28181)
Placement.create(home, 2).place("team/a", 0)
Placement(home).place("team/b", 1)
host = start_embedded(settings, dashboard=False, num_cpus=2, shards=2)
try:
    mem = Memos(host.transport, "agent:alice")
    mem.create_cube("team/a")
    mem.create_cube("team/b")
    written = mem.write_many([{"cube": "team/a", "content": "penguins breed in the antarctic winter"},
                              {"cube": "team/b", "content": "antarctic penguins eat krill"},
                              {"cube": "team/b", "content": "the design review moved to friday"}])
    hits = mem.search("antarctic penguins", ["team/a", "team/b"], k=2)
    pids = [p["pid"] for p in host.transport.ping()]
    os.kill(pids[1], signal.SIGKILL)
    after = mem.search("antarctic penguins", ["team/a", "team/b"], k=2)  # resent until Ray restarts shard 1
    print("RESULT " + json.dumps({
        "written": written.written, "ids": [r.id for r in written.results],
        "hits": sorted(h.memory.cube for h in hits), "after": sorted(h.memory.cube for h in after),
        "read_b": mem.read(written.results[1].id).content,
        "old_pids": pids, "new_pids": [p["pid"] for p in host.transport.ping()],
        "cubes": [c.name for c in mem.cubes()],
        "shard_files": [(home / "shards" / str(k) / "memos.sqlite3").exists() for k in range(2)],
        "unsharded_file": (home / "memos.sqlite3").exists(),
    }))
finally:
    host.shutdown()
"""


def test_two_shard_actors_route_writes_fan_out_search_and_survive_a_kill(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "home")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert r["written"] == 3
    assert r["hits"] == ["team/a", "team/b"] and r["after"] == r["hits"]
    assert r["read_b"] == "antarctic penguins eat krill"
    assert r["new_pids"][0] == r["old_pids"][0] and r["new_pids"][1] != r["old_pids"][1]
    assert r["cubes"] == ["team/a", "team/b"]
    assert r["shard_files"] == [True, True] and not r["unsharded_file"]


JOIN_SCRIPT = r"""
import json, sys
from memos.runtime import Runtime
from memos.storage.placement import Placement

Placement(sys.argv[1]).place("team/a", 0)
Placement(sys.argv[1]).place("team/b", 1)
with Runtime.start(mode="cluster") as rt:
    c = rt.client("agent:ops")
    c.create_cube("team/a"); c.create_cube("team/b")
    c.write_many([{"cube": "team/a", "content": "emperor penguins breed in the antarctic winter"},
                  {"cube": "team/b", "content": "antarctic penguins eat krill"},
                  {"cube": "team/b", "content": "the design review moved to friday"}])
    hits = c.search("antarctic penguins", ["team/a", "team/b"], k=2)
    print("RESULT " + json.dumps(sorted(h.memory.cube for h in hits)))
"""


def test_memos_up_joins_an_existing_ray_cluster_with_shards_events_and_report(tmp_path):
    """A Ray head the test starts itself (127.0.0.1, ports 28665-28699, token auth as Ray's default), then
    `memos up --address` with two shards on it: a write to cubes on both shards and a search across them;
    `memos events` (every shard, by time), `memos events --follow` seeing a later write, `memos report`, `memos
    status` naming both shards, `memos cube move` (the cube's memories found on its new shard); `memos
    down` stops memos' actors and leaves the cluster running, which the test then stops (its own processes only)."""
    import contextlib
    import os
    import queue
    import shutil
    import tempfile
    import threading
    import time
    from pathlib import Path

    import psutil

    from memos.hosting.ray_host import _ensure_auth_token, _ray_cli, session_processes, stop_processes

    home = tmp_path / "home"
    ray_tmp = Path(tempfile.mkdtemp(prefix="memos-join-", dir="/tmp"))  # this cluster's session, apart from others
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_MODEL": "none", "MEMOS_EMBEDDER": "hashing",
           "TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token"}
    gcs = "127.0.0.1:28665"
    ports = ["--port=28665", "--node-manager-port=28666", "--object-manager-port=28667",
             "--ray-client-server-port=28668", "--metrics-export-port=28669", "--dashboard-agent-listen-port=28670",
             "--dashboard-agent-grpc-port=28671", "--runtime-env-agent-port=28672", "--min-worker-port=28673",
             "--max-worker-port=28699"]

    def memos(*args, timeout=240):
        return subprocess.run([sys.executable, "-m", "memos.cli", *args], env=env, capture_output=True, text=True,
                              timeout=timeout)

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    _ensure_auth_token()
    began = time.time()
    head = subprocess.run([_ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                           "--disable-usage-stats", "--num-cpus=2", *ports], env=env, capture_output=True, text=True,
                          timeout=180)

    def ours() -> list[dict]:
        sessions = [p for p in (ray_tmp / "ray").glob("session_*") if not p.is_symlink()]
        return [p for s in sessions for p in session_processes(str(s), gcs, since=began)]

    try:
        assert head.returncode == 0, head.stdout + head.stderr
        up = memos("up", "--address", gcs, "--shards", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"joined the Ray cluster at {gcs}" in up.stdout and json.loads((home / "cluster.json").read_text())["joined"]
        try:
            run = subprocess.run([sys.executable, "-c", JOIN_SCRIPT, str(home)], env=env, capture_output=True,
                                 text=True, timeout=180)
            assert run.returncode == 0, run.stderr[-4000:]
            hits = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))[7:])
            assert hits == ["team/a", "team/b"]  # one hit from each shard

            events = memos("events", "--as", "agent:ops", "--type", "written")
            assert events.returncode == 0, events.stdout + events.stderr
            written = [json.loads(line) for line in events.stdout.splitlines()]
            assert sorted(e["cube"] for e in written) == ["team/a", "team/b", "team/b"]
            assert [e["at"] for e in written] == sorted(e["at"] for e in written)

            follow = subprocess.Popen(
                [sys.executable, "-m", "memos.cli", "events", "--as", "agent:ops", "--follow", "--interval", "0.2",
                 "--type", "written"], env=env, stdout=subprocess.PIPE, stderr=(tmp_path / "follow.err").open("w"),
                text=True)
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=lambda: [lines.put(line) for line in follow.stdout], daemon=True).start()
            try:
                seen: list[dict] = []

                def read_until(n: int) -> None:
                    deadline = time.time() + 120
                    while len(seen) < n and time.time() < deadline:
                        with contextlib.suppress(queue.Empty):
                            seen.append(json.loads(lines.get(timeout=1.0)))
                    assert len(seen) >= n, (seen, follow.poll(), (tmp_path / "follow.err").read_text()[-2000:])

                read_until(3)
                assert memos("write", "--as", "agent:ops", "team/a", "a later note").returncode == 0
                read_until(4)
                assert seen[3]["cube"] == "team/a" and len(seen) == 4
            finally:
                follow.terminate()
                follow.wait(timeout=30)

            report = memos("report", "--out", str(tmp_path / "report"))
            assert report.returncode == 0, report.stdout + report.stderr
            assert (tmp_path / "report" / "index.html").exists()

            # `memos status` lists the shards; `memos cube move` re-places a cube, and its memories follow it.
            status = memos("status")
            assert status.returncode == 0, status.stdout + status.stderr
            assert "shard 0 (memos-kernel-shard-0)" in status.stdout and "shard 1 (memos-kernel-shard-1)" in status.stdout
            assert "cubes placed per shard: 0: " in status.stdout  # (actor states: UNKNOWN here, the head has no dashboard)
            move = memos("cube", "move", "team/a", "--shard", "1")
            assert move.returncode == 0, move.stdout + move.stderr
            assert json.loads((home / "shards" / "placement.json").read_text())["cubes"]["team/a"] == 1
            found = memos("search", "--as", "agent:ops", "team/a", "emperor penguins")
            assert found.returncode == 0 and "emperor penguins breed" in found.stdout, found.stdout + found.stderr
        finally:
            down = memos("down")
        assert down.returncode == 0, down.stdout + down.stderr
        alive = [p for p in ours() if psutil.pid_exists(p["pid"])]
        assert alive, "memos down stopped the cluster it had joined"
    finally:
        stop_processes(ours())
        shutil.rmtree(ray_tmp, ignore_errors=True)
