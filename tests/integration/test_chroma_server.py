"""Chroma in client/server mode: a real ``chroma run`` server on 127.0.0.1, started and stopped by the test, as the
index of two data dirs (two kernels, as two shards would be) in their own collections."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from memos.client import Memos
from memos.config import Settings
from memos.kernel.factory import open_kernel
from memos.models.hashing import HashingEmbedder
from memos.service import KernelService
from memos.transports import InProcessTransport

pytestmark = pytest.mark.integration

SERVER = "import sys; from chromadb.cli.cli import app; sys.argv[0] = 'chroma'; sys.exit(app())"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def chroma_server(tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, "run", "--path", str(tmp_path / "chroma-server"), "--host", "127.0.0.1",
         "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(f"{url}/api/v2/heartbeat", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chroma run did not start (exit code {proc.poll()})") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _client(home, url, collection) -> Memos:
    settings = Settings(home=home, model=None, chroma_url=url, chroma_collection=collection)
    return Memos(InProcessTransport(KernelService(open_kernel(settings, embedder=HashingEmbedder()))), "agent:a")


def test_two_data_dirs_share_one_chroma_server_in_their_own_collections(tmp_path, chroma_server):
    a = _client(tmp_path / "a", chroma_server, "memos_shard_a")
    b = _client(tmp_path / "b", chroma_server, "memos_shard_b")
    try:
        a.create_cube("team/a")
        b.create_cube("team/b")
        written_a = a.write_many(["the ferry leaves at dawn", "the harbour opens at nine"], cube="team/a")
        written_b = b.write_many(["the lighthouse keeper counts ships"], cube="team/b")
        assert {h.memory.id for h in a.search("ferry harbour", "team/a", mode="dense")} == {o.id for o in written_a.results}
        assert [h.memory.id for h in b.search("lighthouse", "team/b", mode="dense")] == [written_b.results[0].id]
    finally:
        a.close()
    # Reopened, a's start-up reconcile finds its index consistent and leaves b's collection alone.
    a = _client(tmp_path / "a", chroma_server, "memos_shard_a")
    try:
        report = a.transport.service.kernel.indexer.reconcile(deep=True)
        assert report.consistent and report.expected == 2
        assert len(b.search("lighthouse keeper", "team/b", mode="dense")) == 1
        assert len(a.search("ferry", "team/a", mode="dense")) == 2
    finally:
        a.close()
        b.close()
