"""Chroma as the persistent vector index (embedded ``PersistentClient``, or a Chroma server by URL).

Only this module imports chromadb. Embeddings are always computed by memos' own embedder and passed in, and the
collection is created with ``embedding_function=None``, so Chroma never loads (or downloads) a model of its own.
Only one process may own a persistent path: the kernel does. Chroma errors are translated to ``BackendError`` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from memos.errors import BackendError
from memos.storage.vector import IndexEntry, IndexQuery

_BATCH = 1000


@contextmanager
def _translated(what: str, **details: Any) -> Iterator[None]:
    """The one place Chroma's errors become ``BackendError`` ("chroma: <what> failed: ...")."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 -- chromadb raises many unrelated types; translated once, here
        raise BackendError(f"chroma: {what} failed: {exc}", **details) from exc


def _where(query: IndexQuery) -> dict[str, Any]:
    from memos.storage.sqlite import FOREVER

    clauses: list[dict[str, Any]] = [
        {"cube": {"$in": list(query.cubes)}},
        {"state": {"$in": list(query.states)}},
    ]
    if query.at is None:
        clauses.append({"valid_to": {"$eq": FOREVER}})
    else:
        clauses.append({"valid_from": {"$lte": query.at}})
        clauses.append({"valid_to": {"$gt": query.at}})
    clauses.extend({k: {"$eq": v}} for k, v in query.equals.items())
    clauses.extend({k: {"$in": list(vs)}} for k, vs in query.one_of.items())
    return {"$and": clauses}


class ChromaIndex:
    """A ``VectorIndex`` over one Chroma collection (cosine space)."""

    def __init__(self, path: str | Path | None = None, *, url: str | None = None, collection: str = "memos_plaintext") -> None:
        with _translated("opening the vector index", path=Path(path).name if path else None, url=url):
            import chromadb
            from chromadb.config import Settings

            settings = Settings(anonymized_telemetry=False)
            if url is not None:
                from urllib.parse import urlparse

                parsed = urlparse(url)
                self._client = chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1", port=parsed.port or 8000, ssl=parsed.scheme == "https",
                    settings=settings,
                )
            else:
                Path(path or ".").mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(path), settings=settings)
            self._col = self._client.get_or_create_collection(
                collection, embedding_function=None, metadata={"hnsw:space": "cosine"}
            )

    def upsert(self, entries: list[IndexEntry]) -> None:
        with _translated("upsert"):
            for i in range(0, len(entries), _BATCH):
                part = entries[i : i + _BATCH]
                self._col.upsert(
                    ids=[e.id for e in part], embeddings=[e.embedding for e in part], metadatas=[e.metadata for e in part]
                )

    def set_metadata(self, ids: list[str], metadata: list[dict[str, Any]]) -> None:
        if not ids:
            return
        with _translated("update"):
            present = set(self._col.get(ids=ids, include=[])["ids"])
            pairs = [(i, m) for i, m in zip(ids, metadata, strict=True) if i in present]
            if pairs:
                self._col.update(ids=[p[0] for p in pairs], metadatas=[p[1] for p in pairs])

    def delete(self, ids: list[str]) -> None:
        if not ids:
            return
        with _translated("delete"):
            self._col.delete(ids=ids)

    def query(self, query: IndexQuery) -> list[tuple[str, float]]:
        with _translated("query"):
            res = self._col.query(
                query_embeddings=[query.embedding], n_results=query.limit, where=_where(query), include=["distances"]
            )
        ids = res["ids"][0] if res["ids"] else []
        dists = res["distances"][0] if res.get("distances") else [0.0] * len(ids)
        return list(zip(ids, (float(d) for d in dists), strict=True))

    def nearest(self, embedding: list[float], n: int) -> list[tuple[str, float]]:
        """The ``n`` nearest entries, unfiltered, best first (no metadata is fetched: it costs more than the search)."""
        with _translated("query"):
            res = self._col.query(query_embeddings=[embedding], n_results=n, include=["distances"])
        ids = res["ids"][0] if res["ids"] else []
        dists = res["distances"][0] if res.get("distances") else [0.0] * len(ids)
        return list(zip(ids, (float(d) for d in dists), strict=True))

    def ids(self) -> set[str]:
        with _translated("listing"):
            out: set[str] = set()
            offset = 0
            while True:
                page = self._col.get(include=[], limit=5000, offset=offset)["ids"]
                out.update(page)
                if len(page) < 5000:
                    return out
                offset += len(page)

    def get_metadata(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        with _translated("get"):
            out: dict[str, dict[str, Any]] = {}
            for i in range(0, len(ids), _BATCH):
                res = self._col.get(ids=ids[i : i + _BATCH], include=["metadatas"])
                out.update({k: dict(m or {}) for k, m in zip(res["ids"], res["metadatas"], strict=True)})
            return out

    def close(self) -> None:
        """Release the path. Chroma shares one System per path within a process; closing the last client stops it,
        so the next open in this process reads the files afresh (another process may have written them since)."""
        client, self._client, self._col = self._client, None, None  # type: ignore[assignment]
        if client is None:
            return
        with _translated("closing the vector index"):
            client.close()
