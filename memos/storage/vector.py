"""The vector index boundary: what the kernel needs from a dense index, and a reference in-memory implementation.

Entries are plaintext versions keyed by ``"<memory_id>@<version>"`` with flat metadata (cube, state, kind, trust,
author, source, valid_from, valid_to). A query filters by cubes, validity at an instant and state before ranking.
The in-memory index is exact (brute-force cosine with numpy); ``ChromaIndex`` (memos.storage.chroma) is the
persistent one. Both pass the same conformance tests (tests/unit/test_vector_index.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from memos.storage.sqlite import FOREVER


def entry_id(memory_id: str, version: int) -> str:
    return f"{memory_id}@{version}"


def parse_entry_id(value: str) -> tuple[str, int]:
    memory_id, _, version = value.partition("@")
    return memory_id, int(version)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    id: str
    embedding: list[float]
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class IndexQuery:
    """Which entries a dense query may return. ``at=None`` means current versions only."""

    embedding: list[float]
    cubes: tuple[str, ...]
    limit: int
    at: float | None = None
    states: tuple[str, ...] = ("active",)
    equals: dict[str, str] = field(default_factory=dict)  # e.g. {"trust": "trusted"}
    one_of: dict[str, tuple[str, ...]] = field(default_factory=dict)  # e.g. {"kind": ("plaintext",)}


class VectorIndex(Protocol):
    def upsert(self, entries: list[IndexEntry]) -> None: ...

    def set_metadata(self, ids: list[str], metadata: list[dict[str, Any]]) -> None: ...

    def delete(self, ids: list[str]) -> None: ...

    def query(self, query: IndexQuery) -> list[tuple[str, float]]:
        """(entry id, cosine distance) best first."""
        ...

    def nearest(self, embedding: list[float], n: int) -> list[tuple[str, float]]:
        """The ``n`` nearest entries whatever their metadata, best first: the kernel filters them itself when that
        is cheaper than the index's filtered ``query``."""
        ...

    def ids(self) -> set[str]: ...

    def get_metadata(self, ids: list[str]) -> dict[str, dict[str, Any]]: ...

    def close(self) -> None: ...


def matches(meta: dict[str, Any], query: IndexQuery) -> bool:
    """The filter semantics every index implements (the in-memory index uses it directly)."""
    if meta.get("cube") not in query.cubes or meta.get("state") not in query.states:
        return False
    if query.at is None:
        if meta.get("valid_to") != FOREVER:
            return False
    elif not (meta.get("valid_from", 0.0) <= query.at < meta.get("valid_to", FOREVER)):
        return False
    if any(meta.get(k) != v for k, v in query.equals.items()):
        return False
    return all(meta.get(k) in vs for k, vs in query.one_of.items())


class InMemoryVectorIndex:
    """Exact cosine search over numpy arrays. For tests and small embedded deployments; not persistent."""

    def __init__(self) -> None:
        self._vectors: dict[str, np.ndarray] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def upsert(self, entries: list[IndexEntry]) -> None:
        for e in entries:
            v = np.asarray(e.embedding, dtype=np.float32)
            n = float(np.linalg.norm(v))
            self._vectors[e.id] = v / n if n else v
            self._meta[e.id] = dict(e.metadata)

    def set_metadata(self, ids: list[str], metadata: list[dict[str, Any]]) -> None:
        for i, m in zip(ids, metadata, strict=True):
            if i in self._meta:
                self._meta[i].update(m)

    def delete(self, ids: list[str]) -> None:
        for i in ids:
            self._vectors.pop(i, None)
            self._meta.pop(i, None)

    def query(self, query: IndexQuery) -> list[tuple[str, float]]:
        candidates = [i for i, m in self._meta.items() if matches(m, query)]
        if not candidates:
            return []
        q = np.asarray(query.embedding, dtype=np.float32)
        n = float(np.linalg.norm(q))
        q = q / n if n else q
        sims = np.stack([self._vectors[i] for i in candidates]) @ q
        order = np.argsort(-sims)[: query.limit]
        return [(candidates[j], float(1.0 - sims[j])) for j in order]

    def nearest(self, embedding: list[float], n: int) -> list[tuple[str, float]]:
        if not self._meta:
            return []
        ids = list(self._vectors)
        q = np.asarray(embedding, dtype=np.float32)
        norm = float(np.linalg.norm(q))
        sims = np.stack([self._vectors[i] for i in ids]) @ (q / norm if norm else q)
        return [(ids[j], float(1.0 - sims[j])) for j in np.argsort(-sims)[:n]]

    def ids(self) -> set[str]:
        return set(self._meta)

    def get_metadata(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {i: dict(self._meta[i]) for i in ids if i in self._meta}

    def close(self) -> None:
        return None


class Embedder(Protocol):
    """Turns texts into unit-length vectors. ``name`` identifies the model (stored with the index)."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> list[list[float]]: ...
