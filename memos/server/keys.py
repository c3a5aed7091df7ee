"""API keys: bearer tokens that stand for principals, stored only as SHA-256 hashes.

A keys file is YAML (or JSON, which YAML reads too): one mapping from the hex SHA-256 of a key to the principal
the key acts as::

    # memos API keys: sha256(key) -> principal. Keys are shown once, when made; only hashes are kept.
    3f0c...e1: agent:writer
    9a41...07: user:alice

The server takes the caller's identity from the key and from nothing else. A plain hash is enough because keys
are 256-bit random strings (``new_key``), so there is no dictionary to try; the presented key's hash is compared
with every stored hash by ``hmac.compare_digest``, so the time taken does not tell which entry, or how much of one,
matched. Like sshd's StrictModes, a keys file that group or others may write is refused: whoever can write it can
mint principals. ``KeyFile`` re-reads the file when it changes, so ``revoke_keys`` takes effect without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import yaml

from memos.logging import get_logger
from memos.types import PRINCIPAL_RE

KEY_PREFIX = "memos_"
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_KEY_CHARS = 256  # a presented key longer than this is not one of ours: reject without hashing megabytes
_HEADER = "# memos API keys: sha256(key) -> principal. Keys are shown once, when made; only hashes are kept.\n"


class Keys(Protocol):
    def principal_for(self, key: str | None) -> str | None:
        """The principal ``key`` acts as, or None for a missing or unknown key."""
        ...


def new_key() -> str:
    """A fresh API key: ``memos_`` and 43 URL-safe characters (256 random bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key, as stored in a keys file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_principal(principal: str, where: str) -> str:
    if not isinstance(principal, str) or not PRINCIPAL_RE.match(principal):
        raise ValueError(f"{where}: invalid principal {principal!r}: use [A-Za-z0-9_.:@-], e.g. 'agent:writer'")
    return principal


class KeyRing:
    """An immutable set of (key hash -> principal) entries.

    Raises (constructor):
        ValueError: an entry is not a 64-hex-digit hash mapped to a valid principal (``*`` is not a principal).
    """

    def __init__(self, hashes: Mapping[str, str], *, source: str = "keys") -> None:
        entries = []
        for digest, principal in hashes.items():
            if not _HASH_RE.match(digest.lower()):
                raise ValueError(f"{source}: {digest[:16]!r}... is not the hex sha256 of a key")
            entries.append((bytes.fromhex(digest), _check_principal(principal, source)))
        self._entries = tuple(entries)

    @classmethod
    def of_keys(cls, keys: Mapping[str, str]) -> KeyRing:
        """A ring from plain ``{key: principal}`` (tests and embedding; files hold hashes only)."""
        return cls({hash_key(key): principal for key, principal in keys.items()})

    def __len__(self) -> int:
        return len(self._entries)

    def principal_for(self, key: str | None) -> str | None:
        if not key or len(key) > _MAX_KEY_CHARS:
            return None
        presented = hashlib.sha256(key.encode("utf-8")).digest()
        found = None
        for digest, principal in self._entries:  # every entry, no early exit: constant time in the match position
            if hmac.compare_digest(digest, presented):
                found = principal
        return found


def _check_mode(path: Path) -> None:
    if os.name == "posix" and path.stat().st_mode & 0o022:
        raise ValueError(f"{path} is writable by group or others; anyone who can write it can add keys (chmod 600)")


def _read(path: Path) -> dict[str, str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sha256(key) -> principal, got {type(data).__name__}")
    for digest in data:
        if not isinstance(digest, str):  # YAML reads an all-digit hash as a number: it must be quoted
            raise ValueError(f"{path}: {digest!r} is not the hex sha256 of a key (quote hashes in YAML)")
    return data


def load_keys(path: str | Path) -> KeyRing:
    """Read and check a keys file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is writable by group or others, is not a mapping, holds a bad entry, or holds no key.
    """
    path = Path(path)
    _check_mode(path)
    try:
        ring = KeyRing(_read(path), source=str(path))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML or JSON: {exc}") from exc
    if not len(ring):
        raise ValueError(f"{path} holds no keys; add one with 'memos keys add PRINCIPAL --file {path}'")
    return ring


class KeyFile:
    """The keys of a file, re-read whenever the file changes (mtime, size or inode).

    A file that becomes unreadable or invalid fails closed: every key is refused (and the reason logged) until
    the file is fixed. The first load raises like ``load_keys``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._log = get_logger("memos.server.keys")
        self._signature = self._stat()
        self._ring = load_keys(self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _current(self) -> KeyRing:
        signature = self._stat()
        with self._lock:
            if signature != self._signature:
                self._signature = signature
                try:
                    self._ring = load_keys(self.path)
                except (OSError, ValueError) as exc:
                    self._ring = KeyRing({})
                    self._log.error("keys file unusable; refusing every key until it is fixed", error=str(exc))
            return self._ring

    def principal_for(self, key: str | None) -> str | None:
        return self._current().principal_for(key)


def _write(path: Path, hashes: Mapping[str, str]) -> None:
    """Replace the file atomically (temp file, fsync, rename), readable and writable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_HEADER)
            if hashes:
                yaml.safe_dump(dict(hashes), f, default_flow_style=False, sort_keys=False)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_key(path: str | Path, principal: str) -> str:
    """Make a key for ``principal``, store its hash in ``path`` (created if missing) and return the key.

    The key is returned once and stored nowhere: whoever asked must keep it.

    Raises:
        ValueError: invalid principal, or an existing file that is invalid or writable by group or others.
    """
    path = Path(path)
    _check_principal(principal, str(path))
    hashes: dict[str, str] = {}
    if path.exists():
        _check_mode(path)
        hashes = _read(path)
        KeyRing(hashes, source=str(path))
    key = new_key()
    hashes[hash_key(key)] = principal
    _write(path, hashes)
    return key


def superuser_warning(principal: str, superusers: tuple[str, ...] | frozenset[str]) -> str | None:
    """The warning ``memos keys add`` prints for a key that acts as a superuser (``system`` by default): such a key
    reads, changes and purges every cube, whatever its grants. None for any other principal."""
    if principal not in superusers:
        return None
    return (f"warning: {principal!r} is a superuser: this key can read, change and purge every cube and sees every "
            "audit record. Give agents and people their own principals with grants; keep a superuser key for "
            "operators, stored like a root password ('memos keys revoke " + principal + "' removes it)")


def revoke_keys(path: str | Path, principal: str) -> int:
    """Remove every key of ``principal`` from ``path``; return how many were removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is invalid or writable by group or others.
    """
    path = Path(path)
    _check_mode(path)
    hashes = _read(path)
    kept = {digest: who for digest, who in hashes.items() if who != principal}
    if len(kept) != len(hashes):
        _write(path, kept)
    return len(hashes) - len(kept)
