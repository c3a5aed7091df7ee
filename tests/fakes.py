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


class FakeModelPort:
    """A model host double for kernel unit tests: 'builds' a payload file of a fixed size, counts words as tokens.
    It has no model, so it cannot generate; the real host is exercised by tests/integration."""

    def __init__(self, payload_bytes: int = 1000) -> None:
        from memos.types import Fingerprint

        self.payload_bytes = payload_bytes
        self._fingerprint = Fingerprint(model_id="fake", config_hash="c", tokenizer_hash="t", dtype="float32")
        self.forgotten: list[str] = []

    def fingerprint(self):
        return self._fingerprint

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) + 4 for t in texts]

    def build_activation(self, text: str, path: str):
        from pathlib import Path

        from memos.models.port import ActivationBuilt
        from memos.types import PayloadRef

        data = (text.encode() * (self.payload_bytes // max(1, len(text)) + 1))[: self.payload_bytes]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        ref = PayloadRef(path=path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        return ActivationBuilt(payload=ref, fingerprint=self._fingerprint, tokens=len(text.split()))

    def forget(self, paths: list[str]) -> None:
        self.forgotten.extend(paths)
