"""The discipline every payload file follows (DESIGN.md, "Storage"): written atomically, read back verified.

A payload is written to a temporary name in its target directory, fsynced, renamed over the target and the
directory fsynced, so a crash leaves either the old file or the new one, never a torn one. A payload is read whole,
its size and sha256 are checked against the :class:`~memos.types.PayloadRef` the kernel recorded, and only those
verified bytes are parsed (nothing is re-read between check and use).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path

from memos.errors import BackendError, CorruptPayload
from memos.types import PayloadRef


def shown(path: str | Path) -> str:
    """A blob's path as errors show it: from the data dir's ``blobs/`` on (``blobs/ab/m_....safetensors``), or its
    file name. An error may travel to a remote caller (HTTP, MCP): it never carries the server's absolute paths."""
    parts = Path(path).parts
    if "blobs" in parts:
        at = len(parts) - 1 - parts[::-1].index("blobs")
        return "/".join(parts[at:])
    return Path(path).name


def write_payload(path: str | Path, data: bytes, *, what: str) -> PayloadRef:
    """Write ``data`` to ``path`` atomically (replacing any file there) and return its reference.

    Raises:
        BackendError: the file cannot be written (nothing new is left at ``path``); ``what`` names it.
    """
    path = Path(path)
    try:
        _write_atomically(path, data)
    except OSError as exc:
        raise BackendError(f"cannot write {what} {shown(path)}: {exc.strerror}", path=shown(path)) from exc
    return PayloadRef(path=str(path), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def read_verified(ref: PayloadRef, *, what: str) -> bytes:
    """The bytes of the file ``ref`` points to, once its size and sha256 match ``ref``.

    Raises:
        CorruptPayload: the file is missing, has another size (truncated or rewritten) or another digest (altered);
            the message names ``what`` and the file.
        BackendError: the file exists but cannot be read.
    """
    path = Path(ref.path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise CorruptPayload(f"{what} {shown(path)} is missing", path=shown(path)) from exc
    except OSError as exc:
        raise BackendError(f"cannot read {what} {shown(path)}: {exc.strerror}", path=shown(path)) from exc
    if len(data) != ref.size_bytes:
        raise CorruptPayload(
            f"{what} {shown(path)} has {len(data)} bytes, expected {ref.size_bytes} (truncated or rewritten)",
            path=shown(path),
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise CorruptPayload(f"{what} {shown(path)} is altered: sha256 {digest}, expected {ref.sha256}",
                             path=shown(path))
    return data


def read_header(data: bytes, name: str, *, what: str, format: str, version: int, required: Iterable[str]) -> dict[str, str]:
    """The ``__metadata__`` of the safetensors bytes ``data``, once it is an object of format ``format`` at
    ``version`` holding every ``required`` key. Reads the header only (no tensors, no torch).

    Raises:
        CorruptPayload: not a safetensors file, another format or version, or a missing field; the message names
            ``what`` and the file ``name``.
    """
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if 8 + length > len(data):
            raise ValueError(f"header length {length} exceeds the file")
        meta = json.loads(data[8 : 8 + length]).get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError(f"__metadata__ is a {type(meta).__name__}, not an object")
    except (struct.error, ValueError, AttributeError, RecursionError) as exc:
        raise CorruptPayload(f"{what} {name} is not a safetensors file: {exc}", path=name) from exc
    if meta.get("format") != format or meta.get("format_version") != str(version):
        raise CorruptPayload(
            f"{what} {name} has format {meta.get('format')!r} version {meta.get('format_version')!r}, "
            f"expected {format!r} version {version}",
            path=name,
        )
    missing = [k for k in required if k not in meta]
    if missing:
        raise CorruptPayload(f"{what} {name} lacks header fields {missing}", path=name)
    return meta


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
