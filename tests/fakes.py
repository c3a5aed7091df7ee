"""Test doubles that need no model: a deterministic hashing embedder (bag of words, signed feature hashing)."""

from __future__ import annotations

import hashlib
import math
import re

_WORD = re.compile(r"\w+")


class HashingEmbedder:
    name = "test-hashing-64"
    dim = 64

    def embed(self, texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vec = [0.0] * self.dim
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                vec[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            out.append([v / norm for v in vec])
        return out
