"""Keeps the vector index (derived data) in step with SQLite (the truth).

Every version write queues ``add``/``close``/``remove`` in ``index_outbox`` inside its own transaction. ``flush``
applies the queue after the commit, idempotently (metadata is always re-read from the row), then deletes what it
applied. A crash between commit and flush leaves the queue for the next start. ``reconcile`` compares the full id
sets (and, with ``deep``, each entry's metadata) and repairs any difference: it is the start-up check and what
``memos doctor --repair`` runs.

**Locking.** The store's connection is the kernel's: every store access here holds ``store_lock`` (the kernel's
lock), briefly. Embedding and index writes happen *outside* it, under the indexer's own ``_flush_lock``, so syscalls
go on while a batch is embedded, and writers that commit meanwhile are indexed together by the next flush (one
embedding batch instead of one call each: the load bench measures what this gives). Lock order: ``_flush_lock``
before ``store_lock``; never call ``flush``/``reconcile`` holding ``store_lock`` (the kernel flushes after it
releases it). The outbox is applied in order, so a change queued while a batch is in flight (an update, a purge's
remove) is applied by the next batch, after what it follows.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from memos.kernel.retrieval import embedding_text
from memos.storage.sqlite import SqliteStore, VersionRow
from memos.storage.vector import Embedder, IndexEntry, VectorIndex, entry_id


def entry_metadata(row: VersionRow) -> dict[str, str | float | int]:
    """What the index holds beside an entry's vector: what its filtered query filters by, nothing more. The memory
    and version are in the entry's id (``memory_id@version``); each metadata key costs Chroma ~0.03 ms per entry
    written (docs/performance.md, "Ingest")."""
    prov = row.provenance
    return {
        "cube": row.cube,
        "state": row.state,
        "kind": row.kind,
        "trust": prov.get("trust", "trusted"),
        "author": prov.get("author", ""),
        "source": prov.get("source", ""),
        "valid_from": row.valid_from,
        "valid_to": row.valid_to,
    }


def same_metadata(held: dict[str, object] | None, truth: dict[str, str | float | int]) -> bool:
    """Index metadata equals what SQLite says. Times are compared to within a few ulps: Chroma does not store every
    float64 bit for bit, and an exact comparison would "repair" the same entries on every run. Keys the index holds
    beyond ``truth`` are ignored: entries written before 2026-12-06 also carry ``memory_id`` and ``version``, which
    nothing reads (Chroma's ``update`` merges keys, so a repair could not remove them anyway)."""
    if held is None or not truth.keys() <= held.keys():
        return False
    return all(
        math.isclose(held[k], v, rel_tol=1e-15) if isinstance(v, float) and isinstance(held[k], float) else held[k] == v
        for k, v in truth.items()
    )


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    expected: int
    indexed: int
    added: int
    removed: int
    fixed_metadata: int

    @property
    def consistent(self) -> bool:
        return self.added == self.removed == self.fixed_metadata == 0


class Indexer:
    def __init__(self, store: SqliteStore, index: VectorIndex, embedder: Embedder,
                 store_lock: AbstractContextManager[Any] | None = None) -> None:
        self.store = store
        self.index = index
        self.embedder = embedder
        self.store_lock = store_lock if store_lock is not None else nullcontext()
        self._flush_lock = threading.RLock()  # reconcile holds it and flushes first

    def _entries(self, rows: list[VersionRow]) -> list[IndexEntry]:
        """Index entries of ``rows``. A memory of a session is embedded with the turn before it
        (``embedding_text``); the call takes ``store_lock`` briefly, so call it without holding it."""
        if not rows:
            return []
        with self.store_lock:
            before = self.store.insertion_neighbours([r.memory_id for r in rows], sides=(-1,))
        texts = [embedding_text(r.content, next(iter(before.get(r.memory_id, ())), None)) for r in rows]
        vectors = self.embedder.embed(texts)
        return [
            IndexEntry(entry_id(r.memory_id, r.version), v, entry_metadata(r)) for r, v in zip(rows, vectors, strict=True)
        ]

    def flush(self) -> int:
        """Apply every queued index change. Returns how many were applied. Raises BackendError from the index."""
        applied = 0
        with self._flush_lock:
            while True:
                with self.store_lock:
                    ops = self.store.pending_index_ops()
                    if not ops:
                        return applied
                    rows = self.store.versions_by_rowid(op[2] for op in ops if op[1] != "remove")
                removes = [op[3] for op in ops if op[1] == "remove"]
                adds = {op[2]: rows[op[2]] for op in ops
                        if op[1] == "add" and op[2] in rows and rows[op[2]].state != "deleted"}
                closes = [rows[op[2]] for op in ops if op[1] == "close" and op[2] in rows and op[2] not in adds]
                if adds:
                    self.index.upsert(self._entries(list(adds.values())))
                if closes:
                    self.index.set_metadata(
                        [entry_id(r.memory_id, r.version) for r in closes], [entry_metadata(r) for r in closes]
                    )
                if removes:
                    self.index.delete(removes)
                with self.store_lock:
                    self.store.ack_index_ops(ops[-1][0])
                applied += len(ops)

    def reconcile(self, *, deep: bool = False, progress: Callable[[str, int, int], None] | None = None) -> ReconcileReport:
        """Make the index hold exactly the indexable versions, with the right metadata when ``deep``.

        ``progress(phase, done, total)``, if given, is called at the start of each phase (``add`` embeds and indexes
        the missing entries, ``check`` compares the metadata of the others when ``deep``) and after each batch.
        """
        tick = progress or (lambda phase, done, total: None)
        with self._flush_lock:
            return self._reconcile(deep, tick)

    def _reconcile(self, deep: bool, tick: Callable[[str, int, int], None]) -> ReconcileReport:
        self.flush()
        with self.store_lock:
            expected = self.store.indexable_entries()
        present = self.index.ids()
        missing = [rowid for eid, rowid in expected.items() if eid not in present]
        extra = [eid for eid in present if eid not in expected]
        if extra:
            self.index.delete(extra)
        with self.store_lock:
            rows = self.store.versions_by_rowid(missing)
        tick("add", 0, len(missing))
        for start in range(0, len(missing), 256):
            part = [rows[r] for r in missing[start : start + 256] if r in rows]
            self.index.upsert(self._entries(part))
            tick("add", min(start + 256, len(missing)), len(missing))
        fixed = 0
        if deep:
            checked = [eid for eid in expected if eid in present]
            tick("check", 0, len(checked))
            for start in range(0, len(checked), 1000):
                part = checked[start : start + 1000]
                meta = self.index.get_metadata(part)
                with self.store_lock:
                    part_rows = self.store.versions_by_rowid(expected[e] for e in part)
                wrong = [
                    (e, entry_metadata(part_rows[expected[e]]))
                    for e in part
                    if expected[e] in part_rows and not same_metadata(meta.get(e), entry_metadata(part_rows[expected[e]]))
                ]
                if wrong:
                    self.index.set_metadata([w[0] for w in wrong], [w[1] for w in wrong])
                    fixed += len(wrong)
                tick("check", min(start + 1000, len(checked)), len(checked))
        return ReconcileReport(len(expected), len(present), len(missing), len(extra), fixed)
