"""Idempotency keys: a write retried after it committed returns what it committed, not a second memory.

A client cannot tell a write that failed from one whose answer was lost (the kernel's process was killed after the
commit, a connection dropped). The Python client gives every write a fresh key (``Write.idempotency_key``) and a
transport resends it unchanged, so the retry is safe: ``replayed`` finds the key (per principal) and answers with
the memory version it wrote, and ``remember`` records the key *in the write's own transaction*, so a write and its
key commit together or not at all.

A key reused for a different request (another cube, other content...) is refused (``InvalidSyscall``): the same key
means the same request. Keys are kept ``IDEMPOTENCY_KEEP_S`` (24 h); a purge keeps the key but forgets the request's
hash, and a retry of a purged write is ``NotFound``, never a resurrection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from memos import syscalls as sc
from memos.errors import InvalidSyscall, NotFound
from memos.storage.sqlite import SqliteStore, VersionRow


def request_hash(call: Any) -> str:
    """sha256 of the syscall's wire form without its key: what "the same request" means."""
    body = call.model_dump(mode="json", exclude={"idempotency_key"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def replayed(store: SqliteStore, principal: str, call: Any, answer: Callable[[VersionRow], Any]) -> Any | None:
    """The answer of the syscall that already committed under ``call.idempotency_key``, or None (run it).

    Raises:
        InvalidSyscall: the key was used for a different request.
        NotFound: the memory it wrote has since been purged.
    """
    key = call.idempotency_key
    if not key:
        return None
    done = store.idempotent_result(principal, key)
    if done is None:
        return None
    op, stored_hash, memory_id, version = done
    if op != call.op or (stored_hash and stored_hash != request_hash(call)):
        raise InvalidSyscall(f"idempotency key {key!r} was already used for a different {op}; use a new key per request",
                             idempotency_key=key)
    row = store.get_version(memory_id, version)
    if row is None:
        raise NotFound(f"the {op} with idempotency key {key!r} committed memory {memory_id}, which has since been purged",
                       id=memory_id)
    return answer(row)


def remember(store: SqliteStore, principal: str, call: Any, memory_id: str, version: int, at: float) -> None:
    """Record what ``call`` committed under its key (no-op without one). Call inside the syscall's transaction."""
    if call.idempotency_key:
        store.remember_idempotent(principal, call.idempotency_key, call.op, request_hash(call), memory_id, version, at,
                                  keep_s=sc.IDEMPOTENCY_KEEP_S)
