"""The memos kernel: syscalls in, typed results or typed errors out. See ``memos.kernel.core``."""

from memos.kernel.core import Kernel, content_hash, new_memory_id

__all__ = ["Kernel", "content_hash", "new_memory_id"]
