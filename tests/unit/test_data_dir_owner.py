"""One owner per data dir (memos.storage.owner): while a process owns a home, a second process that opens it fails at
once with ``DataDirInUse`` naming the owner, and runs no recovery; once the owner dies (even by SIGKILL) the home is
free again. Issue 13: `memos write` beside `memos serve` used to succeed, corrupting the server's vector search, and
its recovery logged a spurious ``migration_rolled_back`` for a migration the server went on to commit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from memos.client import Memos
from memos.config import Settings
from memos.errors import DataDirInUse
from memos.kernel.factory import open_kernel
from memos.models.hashing import HashingEmbedder
from memos.storage.owner import HomeLock, read_owner

# The owner: a kernel on the home with a migration in flight (journal row `started`, as while a KV cache is built),
# which prints "ready" and then holds the home until it is killed or its stdin closes.
OWNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from memos.config import Settings
    from memos.kernel.factory import open_kernel
    from memos.models.hashing import HashingEmbedder

    kernel = open_kernel(Settings(home=Path(sys.argv[1]), model=None), embedder=HashingEmbedder(), owner="memos serve",
                         endpoint="http://127.0.0.1:8765")
    kernel.execute("agent:a", {"op": "create_cube", "name": "team/x"})
    memory = kernel.execute("agent:a", {"op": "write", "cube": "team/x", "content": "the ferry leaves at dawn"})
    with kernel.store.transaction():
        kernel.store.journal_start(memory.id, 1, "activation", None, None, "agent:a", 0.0)
    print("ready", flush=True)
    sys.stdin.read()
    kernel.close()
    """
)


@pytest.fixture
def owner(tmp_path):
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(home)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        yield home, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def journal_and_events(home: Path) -> tuple[list[str], list[str]]:
    with sqlite3.connect(home / "memos.sqlite3") as db:
        states = [r[0] for r in db.execute("SELECT state FROM migrations ORDER BY seq")]
        events = [r[0] for r in db.execute("SELECT type FROM events ORDER BY seq")]
    return states, events


def test_a_second_opener_fails_at_once_naming_the_owner_and_recovers_nothing(owner):
    home, proc = owner
    before = journal_and_events(home)
    assert before[0] == ["started"]
    started = time.monotonic()
    with pytest.raises(DataDirInUse) as caught:
        Memos.embedded(home, "agent:b", embedder="all-MiniLM-L6-v2")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"memos serve, pid {proc.pid}" in message and "HTTP" in message and "memos up" in message
    assert caught.value.details["pid"] == proc.pid and caught.value.details["endpoint"] == "http://127.0.0.1:8765"
    assert caught.value.code == "in_use"
    # No recovery ran: the owner's migration is still `started`, and nobody logged it as rolled back.
    assert journal_and_events(home) == before
    assert "migration_rolled_back" not in before[1]
    assert read_owner(home)["pid"] == proc.pid


def test_the_cli_beside_an_owner_fails_with_the_owners_name(owner):
    home, proc = owner
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_MODEL": "none"}
    env.pop("MEMOS_API_KEY", None)
    out = subprocess.run([sys.executable, "-m", "memos.cli", "write", "team/x", "more"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error [in_use]" in out.stderr and f"memos serve, pid {proc.pid}" in out.stderr
    assert journal_and_events(home)[0] == ["started"]


def test_a_killed_owner_frees_the_home_for_the_next_one(owner):
    home, proc = owner
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert read_owner(home) is None
    kernel = open_kernel(Settings(home=home, model=None), embedder=HashingEmbedder(), owner="test")
    try:
        assert json.loads((home / "owner.lock").read_text())["pid"] == os.getpid()
        # The next owner's recovery rolls back the dead owner's migration, as it should.
        assert journal_and_events(home)[0] == ["rolled_back"]
    finally:
        kernel.close()
    assert read_owner(home) is None


def test_two_opens_in_one_process_exclude_each_other_until_close(tmp_path):
    settings = Settings(home=tmp_path / "home", model=None)
    first = open_kernel(settings, embedder=HashingEmbedder(), owner="first")
    try:
        with pytest.raises(DataDirInUse, match=f"first, pid {os.getpid()}"):
            open_kernel(settings, embedder=HashingEmbedder(), owner="second")
    finally:
        first.close()
    open_kernel(settings, embedder=HashingEmbedder(), owner="second").close()


def test_the_lock_records_its_endpoint_once_the_owner_listens(tmp_path):
    lock = HomeLock.acquire(tmp_path, "memos serve")
    try:
        lock.set_endpoint("https://memos.internal:8765")
        assert read_owner(tmp_path)["endpoint"] == "https://memos.internal:8765"
    finally:
        lock.release()
    assert read_owner(tmp_path) is None


def test_the_cli_talks_to_the_serving_owner_over_http_when_it_has_a_key(tmp_path):
    """`memos serve` owns the home and records its URL; with $MEMOS_API_KEY a `memos` command goes to it over HTTP
    (acting as the key's principal), without one it fails naming the server."""
    import socket
    import urllib.request

    home = tmp_path / "home"
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_MODEL": "none", "MEMOS_EMBEDDER": "hashing"}
    env.pop("MEMOS_API_KEY", None)

    def memos(*args, key=None):
        extra = {"MEMOS_API_KEY": key} if key else {}
        return subprocess.run([sys.executable, "-m", "memos.cli", *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=120)

    key = memos("keys", "add", "agent:ops").stdout.strip()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "memos.cli", "serve", "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read() if server.poll() else "no answer"
                time.sleep(0.3)
        assert read_owner(home)["endpoint"] == f"http://127.0.0.1:{port}"

        made = memos("cube", "create", "ops/notes", key=key)
        assert made.returncode == 0, made.stderr
        written = memos("write", "ops/notes", "the runbook lives in the wiki", key=key)
        assert written.returncode == 0, written.stderr
        assert json.loads(written.stdout)["provenance"]["author"] == "agent:ops"
        found = memos("search", "ops/notes", "runbook", key=key)
        assert json.loads(found.stdout)[0]["memory"]["id"] == json.loads(written.stdout)["id"]

        refused = memos("write", "ops/notes", "no key, no entry")
        assert refused.returncode == 2 and f"memos serve, pid {server.pid}" in refused.stderr
        assert f"http://127.0.0.1:{port}" in refused.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_memos_up_refuses_a_data_dir_another_process_owns_before_starting_ray(tmp_path):
    from memos.hosting.ray_host import up

    lock = HomeLock.acquire(tmp_path, "memos serve", endpoint="http://127.0.0.1:8765")
    try:
        with pytest.raises(DataDirInUse, match=f"memos serve, pid {os.getpid()}"):
            up(Settings(home=tmp_path, model=None))
    finally:
        lock.release()
    assert not (tmp_path / "cluster.json").exists()
