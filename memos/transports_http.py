"""The old home of ``HttpTransport``; it lives in ``memos.transports.http``."""

from memos.transports.http import HttpTransport

__all__ = ["HttpTransport"]
