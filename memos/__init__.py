"""memos: a memory operating system for LLM agents.

``import memos`` is light: it loads the data model and errors only. The kernel, storage, Ray hosting and models are
imported where they are used. Start with :func:`memos.client.Memos` (``from memos.client import Memos``).
"""

from memos.errors import MemosError
from memos.types import Kind, Memory, Provenance, Right, Source, State, Trust

__version__ = "0.1.0"

__all__ = ["Kind", "Memory", "MemosError", "Provenance", "Right", "Source", "State", "Trust", "__version__"]
