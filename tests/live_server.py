"""Test helpers for the service surface: an in-process kernel on the hashing embedder, and an ASGI app served by
uvicorn on 127.0.0.1 (a free port) in a background thread, stopped when the block ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fakes import HashingEmbedder

from memos.kernel import Kernel
from memos.server.http import server_config
from memos.service import KernelService
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.transports import InProcessTransport


def in_process_transport(home: Path) -> InProcessTransport:
    """A kernel on ``home`` with an in-memory index and the hashing embedder (no model, no Ray)."""
    kernel = Kernel(SqliteStore(home / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(), HashingEmbedder())
    return InProcessTransport(KernelService(kernel))


@contextmanager
def live_server(app: Any, *, tls_cert: str | None = None, tls_key: str | None = None) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 with the same uvicorn configuration as ``memos serve``; yield its base URL."""
    config = server_config(app, host="127.0.0.1", port=0, tls_cert=tls_cert, tls_key=tls_key, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="memos-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls_cert else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
