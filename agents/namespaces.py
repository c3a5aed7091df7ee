"""LangGraph namespaces <-> memos cube names: one label is one cube-name segment, reversibly.

A cube name is 1-8 segments of ``[a-z0-9][a-z0-9_-]{0,63}``; a LangGraph label is any non-empty string without
``.``. A label that is already a valid segment is used as is (``("team", "research")`` is the cube
``team/research``, so agents' cubes and store namespaces are the same thing); any other label is escaped as
``x--`` + its UTF-8 in lowercase base32 without padding (``"Alice"`` -> ``x--ifwgsy3f``), and so is a valid label
that itself starts with ``x--``, so decoding is unambiguous. An escaped label holds at most 38 bytes of UTF-8.
"""

from __future__ import annotations

import base64
import binascii
import re

from langgraph.store.base import InvalidNamespaceError

_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
_ESCAPE = "x--"
MAX_SEGMENTS = 8


def encode_label(label: str) -> str:
    """The cube-name segment of a namespace label.

    Raises:
        InvalidNamespaceError: the label is too long to be escaped into one segment.
    """
    if _SEGMENT.match(label) and not label.startswith(_ESCAPE):
        return label
    encoded = _ESCAPE + base64.b32encode(label.encode("utf-8")).decode("ascii").rstrip("=").lower()
    if len(encoded) > 64:
        raise InvalidNamespaceError(
            f"namespace label {label!r} cannot be a memos cube-name segment: use [a-z0-9_-] (up to 64 characters) "
            "or at most 38 bytes of other text"
        )
    return encoded


def decode_segment(segment: str) -> str | None:
    """The label a segment encodes, or None if no label encodes to it (a cube the store did not name)."""
    if not segment.startswith(_ESCAPE):
        return segment
    body = segment[len(_ESCAPE):].upper()
    try:
        label = base64.b32decode(body + "=" * (-len(body) % 8)).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return label if label and encode_label(label) == segment else None


class NamespaceMap:
    """Maps namespaces onto cube names under an optional ``root`` (cube-name prefix, e.g. ``"apps/chat"``)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = tuple(root.split("/")) if root else ()
        for segment in self.root:
            if not _SEGMENT.match(segment):
                raise ValueError(f"invalid store root {root!r}: use a cube name such as 'apps/chat'")

    def cube(self, namespace: tuple[str, ...]) -> str:
        """The cube of a namespace.

        Raises:
            InvalidNamespaceError: empty, too deep for a cube name, or a label that cannot be encoded.
        """
        if not namespace:
            raise InvalidNamespaceError("namespace cannot be empty")
        if len(self.root) + len(namespace) > MAX_SEGMENTS:
            raise InvalidNamespaceError(
                f"namespace {namespace!r} is {len(namespace)} labels deep; memos cube names hold at most "
                f"{MAX_SEGMENTS - len(self.root)} under this store's root"
            )
        return "/".join((*self.root, *(encode_label(label) for label in namespace)))

    def namespace(self, cube: str) -> tuple[str, ...] | None:
        """The namespace a cube stands for, or None if the cube is not under the root or not store-named."""
        segments = tuple(cube.split("/"))
        n = len(self.root)
        if segments[:n] != self.root or len(segments) == n:
            return None
        labels = tuple(decode_segment(s) for s in segments[n:])
        return None if None in labels else labels  # type: ignore[return-value]
