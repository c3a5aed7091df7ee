"""A feature-hashing bag-of-words embedder: no model, no third-party code, deterministic.

For runs where retrieval quality does not matter and a model load per process start would dominate (the crash soak
starts a fresh kernel process for every cycle; all-MiniLM-L6-v2 takes 10-20 s to load on a busy 2-core machine).
Identical texts get identical vectors and texts that share words get close ones; nothing more. Retrieval uses
all-MiniLM-L6-v2 (``memos.models.embedder``).
"""

from __future__ import annotations

import hashlib
import math
import re

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    """Signed feature hashing of lowercased words into ``dim`` dimensions, L2-normalised."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vec = [0.0] * self.dim
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "replace"), digest_size=8).digest(), "little")
                vec[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out
