"""The memos kernel: syscalls in, typed results or typed errors out. See ``memos.kernel.kernel``."""

from memos.kernel.kernel import Kernel
from memos.kernel.versions import content_hash, new_memory_id

__all__ = ["Kernel", "content_hash", "new_memory_id"]
