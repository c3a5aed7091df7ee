from __future__ import annotations

import pytest

from memos.client import Memos
from memos.service import KernelService
from memos.transports import InProcessTransport


@pytest.fixture
def mem(kernel) -> Memos:
    """A client for agent:alice over the in-process transport; ``mem.as_principal`` for the others."""
    return Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
