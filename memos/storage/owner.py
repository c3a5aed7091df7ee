"""One owner per data dir: an OS lock on ``<home>/owner.lock`` held by the process that opens the home.

The kernel owns a home's SQLite file and Chroma dir; a second process that opened them too would serve stale vector
search (Chroma's rule, docs/architecture.md) and run crash recovery on migrations the owner is still doing. So
``HomeLock.acquire`` takes an exclusive ``flock`` on the lock file *before* anything in the home is opened, for the
owner's lifetime, and records in the file who holds it: pid, what it is (``memos serve``, the kernel actor of
``memos up``, ``Memos.embedded``...), and where it answers (an HTTP URL, a Ray cluster) when it serves others.

A second opener fails at once with ``DataDirInUse`` naming the owner and what to do instead. The kernel releases
the lock when it closes; the OS releases it when the owner dies, however it dies (``kill -9`` included), so a
restarted owner (a Ray actor restart, the next ``memos`` command) never finds a stale lock. The file itself stays;
its content describes the last owner and means nothing while nobody holds the lock.

``flock`` locks belong to an open file description: two opens in one process exclude each other too, which is
what the kernel needs (two kernels in one process would break Chroma the same way). Not for network filesystems
(NFS ``flock`` semantics vary): keep a home on a local disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from memos.errors import DataDirInUse

LOCK_FILE = "owner.lock"


def _hint(owner: dict[str, Any]) -> str:
    what = str(owner.get("owner", ""))
    endpoint = owner.get("endpoint")
    if what.startswith("memos serve"):
        where = f" at {endpoint}" if endpoint else ""
        return (f"talk to it over HTTP{where} (HttpTransport with an API key; `memos` commands do so when "
                "$MEMOS_API_KEY is set), or stop it and use `memos up`")
    if "memos up" in what:
        return "use `memos` commands or Runtime.start(mode='cluster'): they go through the running cluster"
    return "close it first, or run `memos up` once and let every process connect to that cluster"


class HomeLock:
    """An exclusive lock on a data dir, held until ``release`` (or the process's end)."""

    def __init__(self, path: Path, fd: int, record: dict[str, Any]) -> None:
        self.path = path
        self._fd: int | None = fd
        self.record = record

    @classmethod
    def acquire(cls, home: str | Path, owner: str, *, endpoint: str | None = None, wait_s: float = 0.0) -> HomeLock:
        """Take the lock of ``home`` for this process, as ``owner`` (a short description for the error others get),
        waiting up to ``wait_s`` for a holder to let go (0: fail at once).

        Raises:
            DataDirInUse: another process (or another open in this one) holds it; names its owner and pid.
        """
        path = Path(home) / LOCK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait_s
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise _in_use(Path(home), path) from None
                    time.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "owner": owner, "endpoint": endpoint, "host": socket.gethostname(),
                  "since": time.time()}
        lock = cls(path, fd, record)
        lock._write()
        return lock

    def _write(self) -> None:
        assert self._fd is not None
        data = json.dumps(self.record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def set_endpoint(self, endpoint: str | None) -> None:
        """Record where the owner answers (e.g. ``memos serve``'s URL once it listens), for the next opener's error
        and for clients that talk to the owner instead."""
        self.record = {**self.record, "endpoint": endpoint}
        self._write()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the lock go (idempotent). The file stays; nobody holding it means nobody owns the home."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def read_owner(home: str | Path) -> dict[str, Any] | None:
    """Who holds the lock of ``home`` now, as it recorded itself; None when nobody does.

    Probes with a shared non-blocking lock, released at once: it never blocks, and never holds the home.
    """
    path = Path(home) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _record(path) or {"pid": None, "owner": "another process"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _record(path: Path) -> dict[str, Any] | None:
    # The owner writes its record right after taking the lock: a reader racing it may see an empty file for a moment.
    for _ in range(20):
        try:
            data = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict):
            return data
        time.sleep(0.01)
    return None


def _in_use(home: Path, path: Path) -> DataDirInUse:
    owner = _record(path) or {"pid": None, "owner": "another process"}
    pid = owner.get("pid")
    who = f"{owner.get('owner')}, pid {pid}" if pid is not None else str(owner.get("owner"))
    return DataDirInUse(
        f"the data dir {home} is owned by {who}: {_hint(owner)}",
        owner=owner.get("owner"), pid=pid, endpoint=owner.get("endpoint"),
    )
