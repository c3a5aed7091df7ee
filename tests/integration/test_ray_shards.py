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


def test_memos_up_with_shards_status_move_and_down(tmp_path):
    import os

    home = tmp_path / "home"
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_DASHBOARD_PORT": "28565", "MEMOS_METRICS_PORT": "28566",
           "MEMOS_MODEL": "none", "MEMOS_EMBEDDER": "hashing"}

    def memos(*args):
        return subprocess.run([sys.executable, "-m", "memos.cli", *args], env=env, capture_output=True, text=True,
                              timeout=300)

    up = memos("up", "--shards", "2")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        assert "2 kernel shard actors" in up.stdout
        code = ("from memos.runtime import Runtime\n"
                "with Runtime.start(mode='cluster') as rt:\n"
                "    c = rt.client('agent:ops')\n"
                "    c.create_cube('team/a'); c.create_cube('team/b')\n"
                "    c.write('team/a', 'penguins eat krill')\n")
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=180, env=env)
        status = memos("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "shard 0 (memos-kernel-shard-0)" in status.stdout and "shard 1 (memos-kernel-shard-1)" in status.stdout
        assert status.stdout.count("ALIVE") == 2 and "cubes placed per shard: 0: " in status.stdout
        placement = json.loads((home / "shards" / "placement.json").read_text())
        target = 1 - placement["cubes"]["team/a"]
        move = memos("cube", "move", "team/a", "--shard", str(target))
        assert move.returncode == 0, move.stdout + move.stderr
        assert json.loads((home / "shards" / "placement.json").read_text())["cubes"]["team/a"] == target
        found = memos("search", "--as", "agent:ops", "team/a", "penguins")
        assert found.returncode == 0 and "penguins eat krill" in found.stdout, found.stdout + found.stderr
    finally:
        down = memos("down")
    assert down.returncode == 0, down.stdout + down.stderr
