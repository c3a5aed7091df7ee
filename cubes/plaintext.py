"""Plaintext MemCubes: the text itself is the payload. Validation of what may be stored as text and metadata.

Limits (documented in docs/syscalls.md): content 1 byte to ``MAX_CONTENT_BYTES`` of UTF-8 (not blank),
metadata JSON-serialisable, at most ``MAX_METADATA_BYTES`` and ``MAX_METADATA_DEPTH`` levels deep.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from memos.errors import InvalidSyscall, PayloadTooLarge
from memos.syscalls import MAX_CONTENT_BYTES, MAX_METADATA_BYTES, MAX_METADATA_DEPTH


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def check_content(content: str) -> str:
    """Return ``content`` if it may be stored.

    Raises:
        InvalidSyscall: blank, or not encodable as UTF-8 (lone surrogates).
        PayloadTooLarge: above MAX_CONTENT_BYTES.
    """
    if not content.strip():
        raise InvalidSyscall("content is empty")
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidSyscall(f"content is not valid unicode text: {exc.reason} at position {exc.start}") from exc
    if size > MAX_CONTENT_BYTES:
        raise PayloadTooLarge(
            f"content is {size} bytes; the limit is {MAX_CONTENT_BYTES} bytes (split it into several memories)",
            size=size,
            limit=MAX_CONTENT_BYTES,
        )
    return content


def check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Return ``metadata`` if it may be stored.

    Raises:
        InvalidSyscall: nested too deep, non-string keys, not JSON (NaN, objects...).
        PayloadTooLarge: above MAX_METADATA_BYTES as JSON.
    """

    def walk(value: Any, level: int) -> None:
        if level > MAX_METADATA_DEPTH:
            raise InvalidSyscall(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise InvalidSyscall(f"metadata keys must be strings, got {type(key).__name__}")
                walk(item, level + 1)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item, level + 1)

    walk(metadata, 1)
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidSyscall(f"metadata must be JSON (strings, numbers, booleans, lists, objects): {exc}") from exc
    if len(encoded) > MAX_METADATA_BYTES:
        raise PayloadTooLarge(
            f"metadata is {len(encoded)} bytes as JSON; the limit is {MAX_METADATA_BYTES}",
            size=len(encoded),
            limit=MAX_METADATA_BYTES,
        )
    return metadata
