"""Transports carry syscalls to a kernel and typed results or typed errors back, all in one envelope
(``memos.transports.envelope``): ``local`` (a ``KernelService`` in this process), ``ray`` (the kernel actor) and
``http`` (``memos serve``). The client (``memos.client.Memos``) is the same over all of them.
"""

from __future__ import annotations

from typing import Any

from memos.transports.envelope import Transport, envelope, unwrap
from memos.transports.local import InProcessTransport

__all__ = ["InProcessTransport", "KernelService", "Transport", "envelope", "unwrap"]


def __getattr__(name: str) -> Any:
    # ``from memos.transports import KernelService`` (its old home) keeps working; it lives in memos.service.
    if name == "KernelService":
        from memos.service import KernelService

        return KernelService
    raise AttributeError(name)
