"""SQLite (WAL) store: the single source of truth for cubes, grants, every MemCube version, usage, links, the
audit log, the event outbox and the index outbox.

The store speaks rows, not policy: the kernel decides, the store persists. Every mutating kernel syscall runs inside
one ``transaction()``; it is acknowledged only after the commit. Lexical search is SQLite FTS5 (``bm25()``) over the
same rows, updated in the same transaction as the version it indexes. The vector index (Chroma) is derived data:
changes to it are queued in ``index_outbox`` inside the transaction and applied after the commit, so a crash
between the two is repaired by replaying the outbox at start-up.

Raises ``BackendError`` (translated from ``sqlite3.Error``) for storage failures.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from memos.errors import BackendError, CorruptPayload, InvalidState

#: valid_to of a current version (Chroma metadata must be a finite float).
FOREVER = 1.0e18

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cubes (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, description TEXT NOT NULL, created_at REAL NOT NULL,
    incarnation TEXT
);
CREATE TABLE IF NOT EXISTS grants (
    cube TEXT NOT NULL REFERENCES cubes(name) ON DELETE CASCADE,
    principal TEXT NOT NULL, right TEXT NOT NULL, PRIMARY KEY (cube, principal)
);
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY, cube TEXT NOT NULL REFERENCES cubes(name) ON DELETE CASCADE,
    kind TEXT NOT NULL, current_version INTEGER NOT NULL, state TEXT NOT NULL,
    pinned INTEGER NOT NULL DEFAULT 0, stale INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL,
    reads INTEGER NOT NULL DEFAULT 0, last_read_at REAL
);
CREATE INDEX IF NOT EXISTS memories_by_cube ON memories(cube, state);
CREATE TABLE IF NOT EXISTS versions (
    rowid INTEGER PRIMARY KEY,
    memory_id TEXT NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
    version INTEGER NOT NULL, cube TEXT NOT NULL, kind TEXT NOT NULL, state TEXT NOT NULL,
    content TEXT NOT NULL, metadata TEXT NOT NULL, tags TEXT NOT NULL, provenance TEXT NOT NULL,
    content_hash TEXT NOT NULL, size_bytes INTEGER NOT NULL,
    fingerprint TEXT, payload TEXT,
    valid_from REAL NOT NULL, valid_to REAL NOT NULL,
    UNIQUE (memory_id, version)
);
CREATE INDEX IF NOT EXISTS versions_by_cube ON versions(cube, valid_to, valid_from);
CREATE VIRTUAL TABLE IF NOT EXISTS versions_fts USING fts5(
    content, tags, content='versions', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS access_log (memory_id TEXT NOT NULL, at REAL NOT NULL, principal TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS access_by_memory ON access_log(memory_id, at);
CREATE TABLE IF NOT EXISTS links (
    source TEXT NOT NULL, target TEXT NOT NULL, relation TEXT NOT NULL, author TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (source, target, relation)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, principal TEXT NOT NULL, op TEXT NOT NULL,
    cube TEXT, memory_id TEXT, outcome TEXT NOT NULL, detail TEXT NOT NULL, incarnation TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_cube ON audit(cube, seq);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, type TEXT NOT NULL,
    cube TEXT, memory_id TEXT, principal TEXT, data TEXT NOT NULL, incarnation TEXT
);
-- `memos top` asks for the newest events of a few types each frame: an index walk, not a scan of the history.
CREATE INDEX IF NOT EXISTS events_by_type ON events(type, seq);
CREATE TABLE IF NOT EXISTS index_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, version_rowid INTEGER NOT NULL, entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS derivations (
    child_id TEXT NOT NULL, child_version INTEGER NOT NULL, parent_id TEXT NOT NULL, parent_version INTEGER NOT NULL,
    PRIMARY KEY (child_id, child_version, parent_id)
);
CREATE INDEX IF NOT EXISTS derivations_by_parent ON derivations(parent_id);
CREATE TABLE IF NOT EXISTS migrations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id TEXT NOT NULL, from_version INTEGER NOT NULL,
    to_kind TEXT NOT NULL, path TEXT, state TEXT NOT NULL, rule TEXT, principal TEXT NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS migrations_open ON migrations(state);
-- Idempotency keys of writes (client-generated): a retried write that had committed answers with the original memory.
CREATE TABLE IF NOT EXISTS idempotency (
    principal TEXT NOT NULL, key TEXT NOT NULL, op TEXT NOT NULL, request_hash TEXT NOT NULL,
    memory_id TEXT NOT NULL, version INTEGER NOT NULL, at REAL NOT NULL, PRIMARY KEY (principal, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_time ON idempotency(at);
CREATE INDEX IF NOT EXISTS idempotency_by_memory ON idempotency(memory_id);
"""


class CubeRow(NamedTuple):
    """A row of ``cubes``."""

    name: str
    owner: str
    description: str
    created_at: float


class EventRow(NamedTuple):
    """A row of the event outbox; ``data`` is its JSON text."""

    seq: int
    at: float
    type: str
    cube: str | None
    memory_id: str | None
    principal: str | None
    data: str
    incarnation: str | None


class AuditRow(NamedTuple):
    """A row of the audit log."""

    seq: int
    at: float
    principal: str
    op: str
    cube: str | None
    memory_id: str | None
    outcome: str
    detail: str
    incarnation: str | None


class CountRow(NamedTuple):
    """Current versions of one cube, kind and state: how many, and their bytes (``counts``)."""

    cube: str
    kind: str
    state: str
    count: int
    bytes: int


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One row of ``versions`` joined with the memory's current usage facts."""

    rowid: int
    memory_id: str
    version: int
    cube: str
    kind: str
    state: str
    content: str
    metadata: dict[str, Any]
    tags: tuple[str, ...]
    provenance: dict[str, Any]
    content_hash: str
    size_bytes: int
    fingerprint: dict[str, Any] | None
    payload: dict[str, Any] | None
    valid_from: float
    valid_to: float
    created_at: float  # of the memory (version 1)
    pinned: bool
    stale: bool
    reads: int
    last_read_at: float | None
    current_version: int


_VERSION_COLUMNS = (
    "v.rowid, v.memory_id, v.version, v.cube, v.kind, v.state, v.content, v.metadata, v.tags, v.provenance, "
    "v.content_hash, v.size_bytes, v.fingerprint, v.payload, v.valid_from, v.valid_to, "
    "m.created_at, m.pinned, m.stale, m.reads, m.last_read_at, m.current_version"
)
_FROM = "versions v JOIN memories m ON m.id = v.memory_id"


def _row_to_version(row: tuple[Any, ...]) -> VersionRow:
    return VersionRow(
        rowid=row[0],
        memory_id=row[1],
        version=row[2],
        cube=row[3],
        kind=row[4],
        state=row[5],
        content=row[6],
        metadata=json.loads(row[7]),
        tags=tuple(json.loads(row[8])),
        provenance=json.loads(row[9]),
        content_hash=row[10],
        size_bytes=row[11],
        fingerprint=json.loads(row[12]) if row[12] else None,
        payload=json.loads(row[13]) if row[13] else None,
        valid_from=row[14],
        valid_to=row[15],
        created_at=row[16],
        pinned=bool(row[17]),
        stale=bool(row[18]),
        reads=row[19],
        last_read_at=row[20],
        current_version=row[21],
    )


_FTS_WORD = re.compile(r"\w+", re.UNICODE)

#: English function words (NLTK's list without contraction fragments, plus could/would). An OR query of every word
#: of a question lets "what", "did", "the" match most memories; bm25's idf damps them but does not silence them.
#: Leaving them out raised lexical recall@10 on the LoCoMo dev split from 0.588 to 0.637 (docs/retrieval.md).
_STOP_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both but by
can could did do does doing down during each few for from further had has have having he her here hers herself
him himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or
other our ours ourselves out over own same she should so some such than that the their theirs them themselves then
there these they this those through to too under until up very was we were what when where which while who whom why
will with would you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())


#: The lexical probe fetches this many times the rows asked for, from FTS5 alone (``SqliteStore.lexical``).
LEXICAL_PROBE_FACTOR = 2


#: Lexical pruning (``SqliteStore.lexical``): a query word is *common* when more than this fraction of the indexed
#: rows, and more than ``COMMON_MIN_ROWS`` of them, contain it. When a query has both rare and common words, only
#: documents with a rare word are ranked (their scores still count the common words): bm25 is computed for every
#: document that matches the query, and one template word (*lives*, *code*) matches 14% of a 100k-memory cube.
COMMON_FRACTION = 0.05
COMMON_MIN_ROWS = 2000
#: Once a query has a common word, its rarer words keep bringing documents only while they match at most this many
#: rows together: beyond, the commonest of them is scored only too (``_rare_first``), down to one word.
RARE_BUDGET_ROWS = 1000


def fts_words(text: str, max_terms: int = 32) -> list[str]:
    """The distinct words of ``text`` a lexical query ORs, lower-cased, in order: stop words (``STOP_WORDS``) are
    left out, unless ``text`` has no other word."""
    words = list(dict.fromkeys(_FTS_WORD.findall(text.lower())))
    return ([w for w in words if w not in STOP_WORDS] or words)[:max_terms]


def fts_phrases(text: str, max_terms: int = 32) -> list[str]:
    """The quoted phrases ``fts_query`` ORs, in order."""
    return [f'"{w}"' for w in fts_words(text, max_terms)]


def _or(words: Iterable[str]) -> str:
    return " OR ".join(f'"{w}"' for w in words)


def fts_query(text: str, max_terms: int = 32) -> str | None:
    """An FTS5 MATCH expression that ORs the distinct words of ``text`` (quoted, so no FTS syntax leaks through).

    Stop words (``STOP_WORDS``) are left out, unless ``text`` has no other word. None when ``text`` has no word.
    """
    return " OR ".join(fts_phrases(text, max_terms)) or None


BM25_K1, BM25_B = 1.2, 0.75  # FTS5's bm25() constants


def bm25(freqs: Sequence[float], length: float, rows: int, tokens: int, hits: Sequence[int]) -> float:
    """FTS5's ``bm25()`` of a row, computed as FTS5 computes it (same operations, same order, so the same double):
    ``freqs`` the row's instances of each phrase, ``length`` its tokens, over a table of ``rows`` rows and
    ``tokens`` tokens in which ``hits[i]`` rows hold phrase i. Lower is better. The shard router scores a search's
    lexical candidates with it over the statistics of several shards (``memos.transports.router``)."""
    avgdl = float(tokens) / float(rows)
    score = 0.0
    for f, n in zip(freqs, hits, strict=True):
        idf = math.log((rows - n + 0.5) / (n + 0.5))
        if idf <= 0.0:
            idf = 1e-6
        score += idf * ((f * (BM25_K1 + 1.0)) / (f + BM25_K1 * (1 - BM25_B + BM25_B * length / avgdl)))
    return -1.0 * score


def _varints(blob: bytes) -> list[int]:
    """The SQLite varints of ``blob`` (FTS5's docsize and averages records)."""
    out, i = [], 0
    while i < len(blob):
        value = 0
        for n in range(9):
            byte = blob[i]
            i += 1
            if n == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if not byte & 0x80:
                break
        out.append(value)
    return out


def new_incarnation() -> str:
    """A new id for one life of a cube name (created, dropped, created again: two incarnations)."""
    return "inc_" + uuid.uuid4().hex[:16]


class SqliteStore:
    """All SQL of memos. Thread-safe by a lock: the kernel is synchronous, transports may call from threads."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.outbox_writes = 0  # index_outbox rows queued by this process (a counter, never reset)
        self.lexical_pruning = True  # ``lexical`` prunes common words (False: the benchmark's baseline)
        try:
            self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA secure_delete=ON")  # deleted content is overwritten, not left in free pages
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            self._add_incarnations()
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.DatabaseError as exc:
            # The file's name, not its absolute path: errors may reach remote callers (HTTP, MCP).
            raise CorruptPayload(f"cannot open the memos database {self.path.name}: {exc}", path=self.path.name) from exc
        self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------------------------------------ plumbing

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit (nested calls join the outer one). Commits on exit, rolls back on any exception."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._exec("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._db.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self._exec("COMMIT")
            except BackendError:
                if self._db.in_transaction:  # a failed COMMIT leaves the transaction open: nothing of it stays
                    self._db.execute("ROLLBACK")
                raise

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A part of the current transaction that is undone alone if it raises (``ROLLBACK TO``), leaving what came
        before it in place: ``write_many`` writes each item under one, so an item is all there or not at all.

        Raises:
            InvalidState: no transaction is open (a savepoint outside one would commit on release).
        """
        with self._lock:
            if not self._depth:
                raise InvalidState("a savepoint needs an open transaction")
            self._exec("SAVEPOINT item")
            try:
                yield
            except BaseException:
                self._exec("ROLLBACK TO item")
                self._exec("RELEASE item")
                raise
            self._exec("RELEASE item")

    def _error(self, exc: sqlite3.Error, sql: str) -> BackendError:
        return BackendError(f"sqlite {self.path.name}: {exc}", sql=sql.split()[0], path=self.path.name)

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, tuple(params))
        except sqlite3.Error as exc:
            raise self._error(exc, sql) from exc

    @property
    def changes(self) -> int:
        """Rows inserted, changed or deleted through this store since it opened (rolled-back ones included): equal
        at two instants means nothing was written in between."""
        with self._lock:
            return self._db.total_changes

    def held_here(self) -> bool:
        """The calling thread holds the store (inside a transaction, or a statement): another thread's statement
        would wait for it."""
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cursor = self._exec(sql, params)
            try:  # a damaged page is found while stepping through the rows, not when the statement starts
                return cursor.fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc, sql) from exc

    def _one(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        with self._lock:
            cursor = self._exec(sql, params)
            try:
                return cursor.fetchone()
            except sqlite3.Error as exc:
                raise self._error(exc, sql) from exc

    def integrity_check(self) -> str:
        row = self._one("PRAGMA integrity_check")
        return str(row[0]) if row else "no answer"

    # ------------------------------------------------------------------------------------------------ cubes, grants

    def _add_incarnations(self) -> None:
        """Databases made before cube incarnations: add the columns, give each cube an incarnation, and file the
        audit and event records of a cube name under the incarnation that exists now (records of names dropped
        before this version cannot be told apart from the current cube's)."""
        for table in ("cubes", "audit", "events"):
            columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if "incarnation" not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN incarnation TEXT")
        missing = [r[0] for r in self._db.execute("SELECT name FROM cubes WHERE incarnation IS NULL")]
        if not missing:
            return
        self._db.execute("BEGIN IMMEDIATE")
        for name in missing:
            self._db.execute("UPDATE cubes SET incarnation = ? WHERE name = ?", (new_incarnation(), name))
        for table in ("audit", "events"):
            self._db.execute(f"UPDATE {table} SET incarnation = (SELECT incarnation FROM cubes WHERE name = {table}.cube) "
                             "WHERE incarnation IS NULL AND cube IS NOT NULL")
        self._db.execute("COMMIT")

    def insert_cube(self, name: str, owner: str, description: str, at: float, incarnation: str | None = None) -> str:
        """Create cube ``name``; returns its incarnation (``incarnation`` or a new one)."""
        incarnation = incarnation or new_incarnation()
        self._exec("INSERT INTO cubes(name, owner, description, created_at, incarnation) VALUES (?,?,?,?,?)",
                   (name, owner, description, at, incarnation))
        return incarnation

    def cube_incarnation(self, name: str) -> str | None:
        """The incarnation of the cube named ``name`` now (None: no such cube)."""
        row = self._one("SELECT incarnation FROM cubes WHERE name = ?", (name,))
        return row[0] if row else None

    def get_cube(self, name: str) -> CubeRow | None:
        row = self._one("SELECT name, owner, description, created_at FROM cubes WHERE name = ?", (name,))
        return CubeRow(*row) if row else None

    def list_cubes(self) -> list[CubeRow]:
        return [CubeRow(*r) for r in self._all("SELECT name, owner, description, created_at FROM cubes ORDER BY name")]

    def delete_cube(self, name: str) -> list[str]:
        """Purge a cube: its memories, versions (and their FTS rows), links, grants. Returns the purged memory ids."""
        ids = [r[0] for r in self._all("SELECT id FROM memories WHERE cube = ?", (name,))]
        for memory_id in ids:
            self.purge_memory(memory_id)
        self._exec("DELETE FROM grants WHERE cube = ?", (name,))
        self._exec("DELETE FROM cubes WHERE name = ?", (name,))
        return ids

    def grants(self, cube: str) -> list[tuple[str, str]]:
        return [tuple(r) for r in self._all("SELECT principal, right FROM grants WHERE cube = ? ORDER BY principal", (cube,))]  # type: ignore[misc]

    def set_grant(self, cube: str, principal: str, right: str) -> None:
        self._exec(
            "INSERT INTO grants(cube, principal, right) VALUES (?,?,?) "
            "ON CONFLICT(cube, principal) DO UPDATE SET right = excluded.right",
            (cube, principal, right),
        )

    def delete_grant(self, cube: str, principal: str) -> None:
        self._exec("DELETE FROM grants WHERE cube = ? AND principal = ?", (cube, principal))

    # ------------------------------------------------------------------------------------------------ versions

    def insert_memory(self, memory_id: str, cube: str, kind: str, state: str, at: float) -> None:
        self._exec(
            "INSERT INTO memories(id, cube, kind, current_version, state, created_at, updated_at) VALUES (?,?,?,0,?,?,?)",
            (memory_id, cube, kind, state, at, at),
        )

    def append_version(
        self,
        *,
        memory_id: str,
        version: int,
        cube: str,
        kind: str,
        state: str,
        content: str,
        metadata: dict[str, Any],
        tags: tuple[str, ...],
        provenance: dict[str, Any],
        content_hash: str,
        size_bytes: int,
        fingerprint: dict[str, Any] | None,
        payload: dict[str, Any] | None,
        at: float,
    ) -> int:
        """Close the current version's validity at ``at`` and append ``version``; index it. Returns its rowid."""
        previous = self._one(
            "SELECT rowid, state FROM versions WHERE memory_id = ? AND valid_to = ?", (memory_id, FOREVER)
        )
        if previous is not None:
            self._exec("UPDATE versions SET valid_to = ? WHERE rowid = ?", (at, previous[0]))
            if previous[1] != "deleted":
                self._outbox("close", previous[0], memory_id, version - 1)
        cur = self._exec(
            "INSERT INTO versions(memory_id, version, cube, kind, state, content, metadata, tags, provenance, "
            "content_hash, size_bytes, fingerprint, payload, valid_from, valid_to) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                memory_id, version, cube, kind, state, content,
                json.dumps(metadata, ensure_ascii=False, sort_keys=True), json.dumps(list(tags), ensure_ascii=False),
                json.dumps(provenance, ensure_ascii=False, sort_keys=True), content_hash, size_bytes,
                json.dumps(fingerprint, sort_keys=True) if fingerprint else None,
                json.dumps(payload, sort_keys=True) if payload else None, at, FOREVER,
            ),
        )
        rowid = int(cur.lastrowid or 0)
        if state != "deleted":
            self._exec(
                "INSERT INTO versions_fts(rowid, content, tags) VALUES (?,?,?)", (rowid, content, " ".join(tags))
            )
            self._outbox("add", rowid, memory_id, version)
        for ref in provenance.get("derived_from", ()):
            self._exec(
                "INSERT OR IGNORE INTO derivations(child_id, child_version, parent_id, parent_version) VALUES (?,?,?,?)",
                (memory_id, version, ref["id"], ref["version"]),
            )
        self._exec(
            "UPDATE memories SET current_version = ?, state = ?, kind = ?, updated_at = ? WHERE id = ?",
            (version, state, kind, at, memory_id),
        )
        return rowid

    def get_version(self, memory_id: str, version: int | None = None) -> VersionRow | None:
        if version is None:
            row = self._one(f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.memory_id = ? AND v.version = m.current_version", (memory_id,))
        else:
            row = self._one(f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.memory_id = ? AND v.version = ?", (memory_id, version))
        return _row_to_version(row) if row else None

    def versions_by_rowid(self, rowids: Iterable[int]) -> dict[int, VersionRow]:
        ids = list(rowids)
        out: dict[int, VersionRow] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            for row in self._all(f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.rowid IN ({marks})", part):
                out[row[0]] = _row_to_version(row)
        return out

    def rowids_of(
        self, entries: Iterable[tuple[str, int]], *, cubes: Iterable[str] | None = None, at: float | None = None,
        states: tuple[str, ...] | None = None,
    ) -> list[int]:
        """The rowids of (memory id, version) pairs, in their order; pairs that do not exist are left out, and so
        are, when ``cubes`` is given, versions outside ``cubes``, not in ``states``, or not valid at ``at`` (current
        when None): the filters of a dense query, checked on plain columns."""
        return [rowid for _, rowid in self.rowid_pairs_of(entries, cubes=cubes, at=at, states=states)]

    def rowid_pairs_of(
        self, entries: Iterable[tuple[str, int]], *, cubes: Iterable[str] | None = None, at: float | None = None,
        states: tuple[str, ...] | None = None,
    ) -> list[tuple[tuple[str, int], int]]:
        """``rowids_of``, each with its (memory id, version) pair."""
        pairs = list(entries)
        found: dict[tuple[str, int], int] = {}
        ids = list(dict.fromkeys(m for m, _ in pairs))
        where, params = "", []
        if cubes is not None:
            cube_list, state_list = list(cubes), list(states or ("active",))
            # Unary + keeps these columns off the index: the lookup is by memory_id (the UNIQUE index); planned on
            # versions_by_cube it scanned the whole cube (73 ms p50 at 100k memories, docs/performance.md).
            where = (f" AND +cube IN ({','.join('?' * len(cube_list))}) AND +state IN ({','.join('?' * len(state_list))})"
                     + (" AND +valid_to = ?" if at is None else " AND +valid_from <= ? AND +valid_to > ?"))
            params = [*cube_list, *state_list, *([FOREVER] if at is None else [at, at])]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            for rowid, memory_id, version in self._all(
                f"SELECT rowid, memory_id, version FROM versions WHERE memory_id IN ({marks}){where}", [*part, *params]
            ):
                found[(memory_id, version)] = rowid
        return [(p, found[p]) for p in pairs if p in found]

    def history(self, memory_id: str) -> list[VersionRow]:
        rows = self._all(f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.memory_id = ? ORDER BY v.version", (memory_id,))
        return [_row_to_version(r) for r in rows]

    def memory_cube(self, memory_id: str) -> str | None:
        row = self._one("SELECT cube FROM memories WHERE id = ?", (memory_id,))
        return row[0] if row else None

    def set_pinned(self, memory_id: str, pinned: bool) -> None:
        self._exec("UPDATE memories SET pinned = ? WHERE id = ?", (int(pinned), memory_id))

    def set_stale(self, memory_id: str, stale: bool) -> None:
        self._exec("UPDATE memories SET stale = ? WHERE id = ?", (int(stale), memory_id))

    def erase_freed(self) -> None:
        """Leave no bytes of deleted rows in the files: rewrite the FTS index (FTS5 keeps deleted tokens in old
        segments until they merge), then checkpoint the write-ahead log into the database and truncate it (the log
        holds old page images). Freed pages are already zeroed (``secure_delete``). Costs a rewrite of the FTS
        index: run it after a purge, not after every change."""
        with self.transaction():
            self._exec("INSERT INTO versions_fts(versions_fts) VALUES('optimize')")
        self._one("PRAGMA wal_checkpoint(TRUNCATE)")

    def purge_memory(self, memory_id: str) -> None:
        """Hard delete: every version, its FTS entry, links and usage. Vector removals go to the outbox."""
        for rowid, version, content, tags, state in self._all(
            "SELECT rowid, version, content, tags, state FROM versions WHERE memory_id = ?", (memory_id,)
        ):
            if state != "deleted":
                self._exec(
                    "INSERT INTO versions_fts(versions_fts, rowid, content, tags) VALUES ('delete', ?, ?, ?)",
                    (rowid, content, " ".join(json.loads(tags))),
                )
                self._outbox("remove", rowid, memory_id, version)
        self._exec("DELETE FROM versions WHERE memory_id = ?", (memory_id,))
        self._exec("DELETE FROM derivations WHERE child_id = ?", (memory_id,))
        self._exec("DELETE FROM links WHERE source = ? OR target = ?", (memory_id, memory_id))
        self._exec("DELETE FROM access_log WHERE memory_id = ?", (memory_id,))
        self._exec("DELETE FROM memories WHERE id = ?", (memory_id,))
        # The key stays (a retry must not write the memory again) but not the hash of what was written.
        self._exec("UPDATE idempotency SET request_hash = '' WHERE memory_id = ?", (memory_id,))

    # ------------------------------------------------------------------------------------------------ moving a cube

    #: What moves with a cube to another kernel shard (``cube_rows``/``insert_cube_rows``), in insertion order: the
    #: cube, its grants and memories, every version (new rowids, in the same order), and what hangs off its memories.
    #: The index outbox is not copied: the receiving kernel indexes what it inserted.
    _MOVE_TABLES: tuple[tuple[str, str, str], ...] = (
        ("cubes", "name, owner, description, created_at, incarnation", "name = ?"),
        ("grants", "cube, principal, right", "cube = ?"),
        ("memories", "id, cube, kind, current_version, state, pinned, stale, created_at, updated_at, reads, "
                     "last_read_at", "cube = ?"),
        ("versions", "memory_id, version, cube, kind, state, content, metadata, tags, provenance, content_hash, "
                     "size_bytes, fingerprint, payload, valid_from, valid_to", "cube = ? ORDER BY rowid"),
        ("access_log", "memory_id, at, principal", "memory_id IN (SELECT id FROM memories WHERE cube = ?)"),
        ("links", "source, target, relation, author, created_at",  # both ways: the cube's "in" links too
         "source IN (SELECT id FROM memories WHERE cube = ?) OR target IN (SELECT id FROM memories WHERE cube = ?)"),
        ("derivations", "child_id, child_version, parent_id, parent_version",
         "child_id IN (SELECT id FROM memories WHERE cube = ?)"),
        ("idempotency", "principal, key, op, request_hash, memory_id, version, at",
         "memory_id IN (SELECT id FROM memories WHERE cube = ?)"),
        ("migrations", "memory_id, from_version, to_kind, path, state, rule, principal, started_at, ended_at, detail",
         "memory_id IN (SELECT id FROM memories WHERE cube = ?) ORDER BY seq"),
        ("audit", "at, principal, op, cube, memory_id, outcome, detail, incarnation", "cube = ? ORDER BY seq"),
        ("events", "at, type, cube, memory_id, principal, data, incarnation", "cube = ? ORDER BY seq"),
    )

    def cube_rows(self, cube: str) -> dict[str, list[tuple[Any, ...]]]:
        """Every row that belongs to ``cube``, by table (``_MOVE_TABLES``), read in one transaction."""
        with self.transaction():
            return {table: self._all(f"SELECT {cols} FROM {table} WHERE {where}", (cube,) * where.count("?"))
                    for table, cols, where in self._MOVE_TABLES}

    def links_across(self, cube: str) -> list[tuple[Any, ...]]:
        """The links between a memory of ``cube`` and a memory of another cube on this store (either way). A move
        keeps them on the shard it leaves (``memos.kernel.moves``): the other end stays, and the link still names
        the moved memory, which the router finds on its new shard."""
        inside = "SELECT id FROM memories WHERE cube = ?"
        outside = "SELECT id FROM memories WHERE cube != ?"
        return self._all(
            "SELECT source, target, relation, author, created_at FROM links "
            f"WHERE (source IN ({inside}) AND target IN ({outside})) OR (target IN ({inside}) AND source IN ({outside}))",
            (cube,) * 4)

    def restore_links(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Insert links as ``links_across`` read them."""
        for source, target, relation, author, at in rows:
            self.add_link(source, target, relation, author, at)

    def cube_fingerprint(self, cube: str) -> list[tuple[Any, ...]]:
        """What changes whenever anything is written to ``cube`` (reads aside): its memories' versions, states and
        flags, and its newest version row. A move compares it before dropping the source."""
        return self._all("SELECT id, current_version, state, pinned, stale, updated_at FROM memories WHERE cube = ? "
                         "ORDER BY id", (cube,)) + self._all(
            "SELECT COUNT(*), MAX(rowid) FROM versions WHERE cube = ?", (cube,))

    def insert_cube_rows(self, rows: dict[str, list[tuple[Any, ...]]], *, payload_path: Any = None) -> int:
        """Insert the rows ``cube_rows`` read on another kernel (inside the caller's transaction); every non-deleted
        version gets its FTS row and an index ``add``. ``payload_path(old) -> new`` rewrites payload file paths.
        Returns the versions inserted."""
        for table, cols, _ in self._MOVE_TABLES:
            data = rows.get(table, [])
            if table == "versions":
                for row in data:
                    values = list(row)
                    if values[12] and payload_path is not None:
                        payload = json.loads(values[12])
                        payload["path"] = str(payload_path(payload["path"]))
                        values[12] = json.dumps(payload, sort_keys=True)
                    cur = self._exec(f"INSERT INTO versions({cols}) VALUES ({','.join('?' * len(values))})", values)
                    rowid = int(cur.lastrowid or 0)
                    if values[4] != "deleted":
                        self._exec("INSERT INTO versions_fts(rowid, content, tags) VALUES (?,?,?)",
                                   (rowid, values[5], " ".join(json.loads(values[7]))))
                        self._outbox("add", rowid, values[0], values[1])
                continue
            if data:  # a key left by an earlier life of these memories here (purge keeps idempotency keys) is replaced
                verb = "INSERT OR REPLACE" if table in ("grants", "links", "derivations", "idempotency") else "INSERT"
                self._executemany(f"{verb} INTO {table}({cols}) VALUES ({','.join('?' * len(data[0]))})", data)
        return len(rows.get("versions", []))

    # ------------------------------------------------------------------------------------------------ usage

    def record_reads_many(self, reads: list[tuple[str, float, str]]) -> None:
        """Count reads, given as (memory id, at, principal): the memory's count and last read time, and one access-log
        row each. Reads of a memory that no longer exists (purged since) are dropped: nothing of it comes back."""
        self._executemany(
            "UPDATE memories SET reads = reads + 1, last_read_at = MAX(COALESCE(last_read_at, ?), ?) WHERE id = ?",
            [(at, at, memory_id) for memory_id, at, _ in reads],
        )
        self._executemany(
            "INSERT INTO access_log(memory_id, at, principal) SELECT ?, ?, ? WHERE EXISTS "
            "(SELECT 1 FROM memories WHERE id = ?)",
            [(memory_id, at, principal, memory_id) for memory_id, at, principal in reads],
        )

    def audit_many(self, rows: list[tuple[float, str, str, str | None, str | None, str]]) -> None:
        """(at, principal, op, cube, memory id, detail) per successful call, outcome ``ok``; filed under the cube's
        incarnation now (pending reads are flushed before any change, a drop included)."""
        self._executemany(
            "INSERT INTO audit(at, principal, op, cube, memory_id, outcome, detail, incarnation) "
            "VALUES (?,?,?,?,?,'ok',?,(SELECT incarnation FROM cubes WHERE name = ?))",
            [(*row, row[3]) for row in rows],
        )

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self._lock:
            try:
                self._db.executemany(sql, rows)
            except sqlite3.Error as exc:
                raise self._error(exc, sql) from exc

    def read_times(self, cubes: list[str], since: float) -> dict[str, list[float]]:
        """memory id -> read instants since ``since`` for the memories of ``cubes``."""
        if not cubes:
            return {}
        marks = ",".join("?" * len(cubes))
        out: dict[str, list[float]] = {}
        for memory_id, at in self._all(
            f"SELECT a.memory_id, a.at FROM access_log a JOIN memories m ON m.id = a.memory_id "
            f"WHERE m.cube IN ({marks}) AND a.at >= ? ORDER BY a.at",
            (*cubes, since),
        ):
            out.setdefault(memory_id, []).append(at)
        return out

    def reads_since(self, memory_id: str, since: float) -> int:
        row = self._one("SELECT COUNT(*) FROM access_log WHERE memory_id = ? AND at >= ?", (memory_id, since))
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------------------------------------ search

    def lexical(
        self, query: str, cubes: Iterable[str], at: float | None, limit: int, states: tuple[str, ...] = ("active",),
        *, probe: bool = True,
    ) -> list[tuple[int, float]]:
        """FTS5 bm25 ranking over versions valid at ``at`` (current when None). Returns (rowid, bm25) best first.

        First a probe: FTS5's own best ``LEXICAL_PROBE_FACTOR * limit`` rows, ranked and cut before any join (the
        join of every match to ``versions`` cost 1.6x the ranking alone at 100k memories, docs/performance.md); then
        their cube, state and validity are checked on ``versions``. When at least ``limit`` probed rows pass, or the
        probe held every match, they are exactly the best ``limit`` passing rows (a better passing row would be in
        the probe). Otherwise (a small cube in a large store, many old versions) the full query ranks every match
        joined to ``versions``. Ties (equal bm25) are ordered by rowid, up to ties at the probe's edge.
        ``probe=False`` runs the full query alone (the benchmark's baseline).

        Pruning (with ``probe``, unless ``lexical_pruning`` is off): when the query has common words (``COMMON_FRACTION``) and rare ones, only the
        documents that contain a rare word are ranked, by their full bm25 (``_rare_first``); the others (those with
        common words only) are left out, and are then found by the dense side only."""
        words = fts_words(query)
        if not words:
            return []
        match = _or(words)
        cube_list = list(cubes)
        cube_marks = ",".join("?" * len(cube_list))
        state_marks = ",".join("?" * len(states))
        if at is None:
            validity, params = "v.valid_to = ?", [FOREVER]
        else:
            validity, params = "v.valid_from <= ? AND v.valid_to > ?", [at, at]
        checks = f"v.cube IN ({cube_marks}) AND v.state IN ({state_marks}) AND {validity}"
        by_rowid = f"+v.cube IN ({cube_marks}) AND +v.state IN ({state_marks}) AND " + validity.replace("v.", "+v.")
        probe_n = LEXICAL_PROBE_FACTOR * limit
        ranked = self._rare_first(words) if probe and self.lexical_pruning else None
        if ranked is not None:  # documents with a rare word, best first: the first ``limit`` of them that pass
            out: list[tuple[int, float]] = []
            for start in range(0, len(ranked), max(probe_n, 500)):
                part = ranked[start : start + max(probe_n, 500)]
                marks = ",".join("?" * len(part))
                passing = {r[0] for r in self._all(f"SELECT v.rowid FROM versions v WHERE v.rowid IN ({marks}) AND {by_rowid}",
                                                   [*(r for r, _ in part), *cube_list, *states, *params])}
                out += [x for x in part if x[0] in passing]
                if len(out) >= limit:
                    break
            return out[:limit]
        probe = [] if not probe else self._all(
            "SELECT rowid, bm25(versions_fts) AS score FROM versions_fts WHERE versions_fts MATCH ? ORDER BY score LIMIT ?",
            (match, probe_n))
        if probe:
            score = {r[0]: r[1] for r in probe}
            marks = ",".join("?" * len(score))
            passing = {r[0] for r in self._all(f"SELECT v.rowid FROM versions v WHERE v.rowid IN ({marks}) AND {by_rowid}",
                                               [*score, *cube_list, *states, *params])}
            if len(passing) >= limit or len(probe) < probe_n:
                return sorted(((r, score[r]) for r in passing), key=lambda x: (x[1], x[0]))[:limit]
        sql = (
            "SELECT v.rowid, bm25(versions_fts) AS score FROM versions_fts JOIN versions v ON v.rowid = versions_fts.rowid "
            f"WHERE versions_fts MATCH ? AND {checks} ORDER BY score, v.rowid LIMIT ?"
        )
        return [(r[0], r[1]) for r in self._all(sql, [match, *cube_list, *states, *params, limit])]

    def lexical_stats(self, query: str, rowids: Sequence[int]) -> dict[str, Any]:
        """What ``bm25`` needs to score ``rowids`` (candidates of ``lexical(query, ...)``) over the statistics of
        several stores: this FTS table's rows and tokens, each phrase's hit count, and each row's instances of
        each phrase and its length (FTS5's own counts: the docsize and averages records, and ``highlight``)."""
        phrases = fts_phrases(query)
        averages = self._one("SELECT block FROM versions_fts_data WHERE id = 1")
        counts = _varints(bytes(averages[0])) if averages else [0]
        rows, tokens = counts[0], sum(counts[1:])
        hits = [int(self._one("SELECT COUNT(*) FROM versions_fts WHERE versions_fts MATCH ?", (p,))[0])  # type: ignore[index]
                for p in phrases]
        ids = list(dict.fromkeys(rowids))
        freqs: dict[int, list[int]] = {r: [0] * len(phrases) for r in ids}
        length: dict[int, int] = {}
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            marks = ",".join("?" * len(part))
            for i, phrase in enumerate(phrases):
                for rowid, *cols in self._all(
                    "SELECT rowid, highlight(versions_fts, 0, char(1), ''), highlight(versions_fts, 1, char(1), '') "
                    f"FROM versions_fts WHERE versions_fts MATCH ? AND rowid IN ({marks})", [phrase, *part]):
                    freqs[rowid][i] = sum(str(c).count("\x01") for c in cols)
            for rowid, sizes in self._all(f"SELECT id, sz FROM versions_fts_docsize WHERE id IN ({marks})", part):
                length[rowid] = sum(_varints(bytes(sizes)))
        return {"rows": rows, "tokens": tokens, "hits": hits,
                "candidates": {r: (freqs[r], length.get(r, 0)) for r in ids}}

    def _rare_first(self, words: list[str]) -> list[tuple[int, float]] | None:
        """(rowid, bm25) of every indexed document that contains a rare word of ``words``, best first (ties by
        rowid), scored on all of ``words``; None when ``words`` are not both rare and common (``COMMON_FRACTION``):
        the full query then ranks every match. When there are common words, the rare ones that match more than
        ``RARE_BUDGET_ROWS`` rows together give up their commonest, one by one, down to one word (a query of
        five names and one word such as *falconer*, 1.5% of the rows, then ranks the names' few documents).

        FTS5 ranks a MATCH expression by bm25 over the phrases in it, and matches what the expression matches. With
        R the rare words and C the common ones, ``(R) AND (R OR C)`` matches the documents with a rare word and
        scores each ``2 * bm25(R) + bm25(C)`` (every phrase counts, each with its own idf over the whole index),
        and ``R`` alone scores ``bm25(R)``: the difference is the document's bm25 for the whole query, the score
        the full query gives it. FTS5 walks the common words' long lists only to the rare words' rows (AND seeks),
        and computes bm25 for the rare words' documents only, twice."""
        if len(words) < 2:
            return None
        counts = self._one("SELECT " + ", ".join(["(SELECT count(*) FROM versions_fts WHERE versions_fts MATCH ?)"]
                                                  * len(words)), [_or([w]) for w in words])
        if counts is None:
            return None
        rows = self._one("SELECT max(id) FROM versions_fts_docsize")  # at least the indexed rows (rowids from 1)
        common_above = max(COMMON_FRACTION * float(rows[0] or 0) if rows else 0.0, COMMON_MIN_ROWS)
        df = dict(zip(words, counts, strict=True))
        rare = [w for w in words if 0 < df[w] <= common_above]  # a word of no row is neither
        common = [w for w in words if df[w] > common_above]
        if not rare or not common:
            return None
        while len(rare) > 1 and sum(df[w] for w in rare) > RARE_BUDGET_ROWS:  # the commonest rare word joins C
            commonest = max(rare, key=lambda w: (df[w], w))
            rare.remove(commonest)
            common.append(commonest)
        both = self._all("SELECT rowid, bm25(versions_fts) FROM versions_fts WHERE versions_fts MATCH ?",
                         (f"({_or(rare)}) AND ({_or(rare + common)})",))
        alone = dict(self._all("SELECT rowid, bm25(versions_fts) FROM versions_fts WHERE versions_fts MATCH ?",
                               (_or(rare),)))
        return sorted(((r, score - alone[r]) for r, score in both), key=lambda x: (x[1], x[0]))

    # ------------------------------------------------------------------------------------------------ index outbox

    def _outbox(self, action: str, rowid: int, memory_id: str, version: int) -> None:
        self.outbox_writes += 1  # tells the kernel that this transaction has index work to flush
        self._exec(
            "INSERT INTO index_outbox(action, version_rowid, entry) VALUES (?,?,?)", (action, rowid, f"{memory_id}@{version}")
        )

    def pending_index_ops(self, limit: int = 1000) -> list[tuple[int, str, int, str]]:
        """(seq, action, version rowid, entry id) in order; action is add, close or remove."""
        return [tuple(r) for r in self._all(
            "SELECT seq, action, version_rowid, entry FROM index_outbox ORDER BY seq LIMIT ?", (limit,)
        )]  # type: ignore[misc]

    def pending_index_count(self) -> int:
        row = self._one("SELECT COUNT(*) FROM index_outbox")
        return int(row[0]) if row else 0

    def children_of(self, parent_id: str) -> list[tuple[str, int]]:
        """Memories whose *current* version was derived from any version of ``parent_id``: (child id, parent version)."""
        return [tuple(r) for r in self._all(
            "SELECT d.child_id, d.parent_version FROM derivations d JOIN memories m ON m.id = d.child_id "
            "AND m.current_version = d.child_version WHERE d.parent_id = ?",
            (parent_id,),
        )]  # type: ignore[misc]

    def get_meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", (key,))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def ack_index_ops(self, up_to_seq: int) -> None:
        with self.transaction():
            self._exec("DELETE FROM index_outbox WHERE seq <= ?", (up_to_seq,))

    def indexable_entries(self) -> dict[str, int]:
        """Entry id -> rowid of every version that belongs in the vector index (all but tombstones)."""
        return {f"{r[1]}@{r[2]}": r[0] for r in self._all("SELECT rowid, memory_id, version FROM versions WHERE state != 'deleted'")}

    # ------------------------------------------------------------------------------------------------ migrations

    def journal_start(self, memory_id: str, from_version: int, to_kind: str, path: str | None, rule: str | None,
                      principal: str, at: float) -> int:
        """Record a migration about to run (committed before any payload is built). Returns its journal id."""
        cur = self._exec(
            "INSERT INTO migrations(memory_id, from_version, to_kind, path, state, rule, principal, started_at) "
            "VALUES (?,?,?,?,'started',?,?,?)",
            (memory_id, from_version, to_kind, path, rule, principal, at),
        )
        return int(cur.lastrowid or 0)

    def journal_end(self, seq: int, state: str, at: float, detail: str = "") -> None:
        self._exec("UPDATE migrations SET state = ?, ended_at = ?, detail = ? WHERE seq = ?", (state, at, detail[:1000], seq))

    def open_migrations(self) -> list[tuple[int, str, int, str, str | None]]:
        """(seq, memory id, from version, to kind, payload path) of migrations that started and never ended."""
        return [tuple(r) for r in self._all(
            "SELECT seq, memory_id, from_version, to_kind, path FROM migrations WHERE state = 'started' ORDER BY seq"
        )]  # type: ignore[misc]

    def migrations_of(self, memory_id: str) -> list[tuple[Any, ...]]:
        return self._all(
            "SELECT seq, from_version, to_kind, state, rule, principal, started_at, ended_at, detail FROM migrations "
            "WHERE memory_id = ? ORDER BY seq",
            (memory_id,),
        )

    def current_of_kind(self, kind: str) -> list[VersionRow]:
        """Current versions of every memory of ``kind`` (all cubes): what the activation budget counts."""
        rows = self._all(f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.version = m.current_version AND m.kind = ?", (kind,))
        return [_row_to_version(r) for r in rows]

    def all_payload_paths(self) -> set[str]:
        """Payload paths of every version of every memory (a file no version references is garbage)."""
        return {json.loads(p)["path"] for (p,) in self._all("SELECT payload FROM versions WHERE payload IS NOT NULL")}

    def cube_payload_paths(self, cube: str) -> set[str]:
        """Payload paths of every version of every memory of ``cube`` (what dropping it deletes)."""
        return {json.loads(p)["path"] for (p,) in self._all(
            "SELECT payload FROM versions WHERE payload IS NOT NULL AND cube = ?", (cube,)
        )}

    def kept_activation_payloads(self) -> list[tuple[str, str, int, dict[str, Any], float]]:
        """(memory id, cube, version, payload, valid_to) of activation versions that are not current and whose
        payload the memory's current version does not use: the caches kept for a rollback, oldest first."""
        rows = self._all(
            "SELECT v.memory_id, v.cube, v.version, v.payload, v.valid_to FROM versions v JOIN memories m "
            "ON m.id = v.memory_id WHERE v.kind = 'activation' AND v.payload IS NOT NULL "
            "AND v.version != m.current_version ORDER BY v.valid_to"
        )
        current = {r.memory_id: (r.payload or {}).get("path") for r in self.current_of_kind("activation")}
        return [(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows if json.loads(r[3])["path"] != current.get(r[0])]

    # ------------------------------------------------------------------------------------------------ links

    def add_link(self, source: str, target: str, relation: str, author: str, at: float) -> None:
        self._exec(
            "INSERT OR IGNORE INTO links(source, target, relation, author, created_at) VALUES (?,?,?,?,?)",
            (source, target, relation, author, at),
        )

    def links_of(self, memory_id: str) -> list[tuple[str, str, str, str, float]]:
        return [tuple(r) for r in self._all(
            "SELECT source, target, relation, author, created_at FROM links WHERE source = ? OR target = ? ORDER BY created_at",
            (memory_id, memory_id),
        )]  # type: ignore[misc]

    # ------------------------------------------------------------------------------------------------ audit, events

    # Audit records and events are filed under the incarnation of their cube at the time (the subquery), so a name
    # dropped and created again starts with an empty log.

    def audit(self, at: float, principal: str, op: str, cube: str | None, memory_id: str | None, outcome: str, detail: str) -> None:
        self._exec(
            "INSERT INTO audit(at, principal, op, cube, memory_id, outcome, detail, incarnation) "
            "VALUES (?,?,?,?,?,?,?,(SELECT incarnation FROM cubes WHERE name = ?))",
            (at, principal, op, cube, memory_id, outcome, detail[:1000], cube),
        )

    def audit_records(self, cube: str | None, since: int, limit: int) -> list[AuditRow]:
        """Every record (None), or those of the current incarnation of ``cube``."""
        columns = "seq, at, principal, op, cube, memory_id, outcome, detail, incarnation"
        if cube is None:
            rows = self._all(f"SELECT {columns} FROM audit WHERE seq > ? ORDER BY seq LIMIT ?", (since, limit))
        else:
            rows = self._all(
                f"SELECT {columns} FROM audit WHERE cube = ? AND incarnation IS (SELECT incarnation FROM cubes WHERE "
                "name = ?) AND seq > ? ORDER BY seq LIMIT ?",
                (cube, cube, since, limit),
            )
        return [AuditRow(*r) for r in rows]

    def emit(self, at: float, type_: str, cube: str | None, memory_id: str | None, principal: str | None, data: dict[str, Any]) -> None:
        self._exec(
            "INSERT INTO events(at, type, cube, memory_id, principal, data, incarnation) "
            "VALUES (?,?,?,?,?,?,(SELECT incarnation FROM cubes WHERE name = ?))",
            (at, type_, cube, memory_id, principal, json.dumps(data, sort_keys=True, default=str), cube),
        )

    def events(self, since: int, limit: int, cubes: list[str] | None, types: tuple[str, ...] = (),
               latest: bool = False) -> list[EventRow]:
        """Events after ``since`` in seq order: the first ``limit`` (or with ``latest`` the last ``limit``), of the
        given cubes' current incarnations (None: every event) and types (empty: all)."""
        if cubes is not None and not cubes:
            return []
        where, params = ["seq > ?"], [since]
        for column, values in (("cube", cubes), ("type", types or None)):
            if values is not None:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if cubes is not None:
            where.append("incarnation IS (SELECT c.incarnation FROM cubes c WHERE c.name = events.cube)")
        rows = self._all(
            f"SELECT seq, at, type, cube, memory_id, principal, data, incarnation FROM events WHERE {' AND '.join(where)} "
            f"ORDER BY seq {'DESC' if latest else ''} LIMIT ?",
            (*params, limit),
        )
        return [EventRow(*r) for r in (rows[::-1] if latest else rows)]

    def last_event_seq(self) -> int:
        row = self._one("SELECT COALESCE(MAX(seq), 0) FROM events")
        return int(row[0]) if row else 0

    # ------------------------------------------------------------------------------------------------ stats

    def counts(self, cubes: list[str]) -> list[CountRow]:
        """(cube, kind, state, count, bytes) over current versions of the given cubes."""
        if not cubes:
            return []
        marks = ",".join("?" * len(cubes))
        return [CountRow(*r) for r in self._all(
            f"SELECT m.cube, m.kind, m.state, COUNT(*), COALESCE(SUM(v.size_bytes), 0) FROM memories m "
            f"JOIN versions v ON v.memory_id = m.id AND v.version = m.current_version WHERE m.cube IN ({marks}) "
            "GROUP BY m.cube, m.kind, m.state",
            cubes,
        )]

    def version_count(self, cubes: list[str]) -> int:
        if not cubes:
            return 0
        marks = ",".join("?" * len(cubes))
        row = self._one(f"SELECT COUNT(*) FROM versions WHERE cube IN ({marks})", cubes)
        return int(row[0]) if row else 0

    def list_memories(self, cube: str, states: tuple[str, ...], limit: int, offset: int,
                      tags: tuple[str, ...] = ()) -> list[VersionRow]:
        """Current versions in ``cube`` in these states that carry every one of ``tags``, oldest first; the tag
        filter is applied before ``limit``/``offset``, so pages are pages of the matching memories."""
        marks = ",".join("?" * len(states))
        tag_filter = ""
        params: list[object] = [cube, *states]
        if tags:
            tag_filter = ("AND NOT EXISTS (SELECT 1 FROM json_each(?) AS wanted WHERE wanted.value NOT IN "
                          "(SELECT value FROM json_each(v.tags))) ")
            params.append(json.dumps(list(tags), ensure_ascii=False))
        rows = self._all(
            f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.version = m.current_version AND m.cube = ? "
            f"AND m.state IN ({marks}) {tag_filter}ORDER BY m.created_at, m.id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_row_to_version(r) for r in rows]

    def current_with_fact(self, cube: str, subject: str, attribute: str, limit: int = 10) -> list[VersionRow]:
        """Current active versions in ``cube`` whose metadata states ``subject``'s ``attribute`` (compared without
        case), newest first: the memories a new value of that property would contradict."""
        rows = self._all(
            f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.version = m.current_version AND m.cube = ? "
            "AND m.state = 'active' AND lower(json_extract(v.metadata, '$.subject')) = ? "
            "AND lower(json_extract(v.metadata, '$.attribute')) = ? ORDER BY v.valid_from DESC LIMIT ?",
            (cube, subject.strip().lower(), attribute.strip().lower(), limit),
        )
        return [_row_to_version(r) for r in rows]

    def session_neighbours(self, row: VersionRow, each_side: int = 1) -> list[VersionRow]:
        """The memories of ``row``'s session (same cube, same ``metadata.session``) created just before and just
        after it, nearest first; none when ``row`` has no session."""
        session = row.metadata.get("session")
        if session is None or isinstance(session, (dict, list)):
            return []
        base = (f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.version = m.current_version AND m.cube = ? "
                "AND json_extract(v.metadata, '$.session') = ? AND (m.created_at, m.rowid) {} "
                "(SELECT created_at, rowid FROM memories WHERE id = ?) ")
        params = (row.cube, session, row.memory_id, each_side)
        before = self._all(base.format("<") + "ORDER BY m.created_at DESC, m.rowid DESC LIMIT ?", params)
        after = self._all(base.format(">") + "ORDER BY m.created_at, m.rowid LIMIT ?", params)
        nearest_first = [r for pair in zip(before, after, strict=False) for r in pair]
        nearest_first += before[len(after):] + after[len(before):]
        return [_row_to_version(r) for r in nearest_first]

    def insertion_neighbours(
        self, memory_ids: Iterable[str], sides: tuple[int, ...] = (-1, 1)
    ) -> dict[str, list[VersionRow]]:
        """For each memory, the current active memories inserted just before and after it in its cube that share
        its ``metadata.session`` (a conversation's turns are written in order): its neighbours in the session.
        ``sides=(-1,)`` gives only the one before (the turn a memory answers)."""
        ids = list(dict.fromkeys(memory_ids))
        if not ids or not sides:
            return {}
        marks = ",".join("?" * len(ids))
        near = ", ".join(f"c.r {'+' if side > 0 else '-'} {abs(int(side))}" for side in sides)
        rows = self._all(
            f"WITH c AS (SELECT m.id, m.rowid AS r, m.cube, json_extract(v.metadata, '$.session') AS s FROM {_FROM} "
            f"WHERE m.id IN ({marks}) AND v.version = m.current_version AND s IS NOT NULL) "
            f"SELECT c.id, {_VERSION_COLUMNS} FROM c JOIN memories m ON m.rowid IN ({near}) AND m.cube = c.cube "
            "JOIN versions v ON v.memory_id = m.id AND v.version = m.current_version "
            "WHERE m.state = 'active' AND json_extract(v.metadata, '$.session') = c.s",
            ids,
        )
        out: dict[str, list[VersionRow]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(_row_to_version(r[1:]))
        return out

    def same_subject(self, row: VersionRow, limit: int = 5) -> list[VersionRow]:
        """Current memories of ``row``'s cube about the same subject (``metadata.subject``) or, without one, by the
        same speaker, nearest in time first."""
        key = "subject" if isinstance(row.metadata.get("subject"), str) else "speaker"
        value = row.metadata.get(key)
        if not isinstance(value, str) or not value:
            return []
        rows = self._all(
            f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.version = m.current_version AND m.cube = ? "
            f"AND lower(json_extract(v.metadata, '$.{key}')) = ? AND m.id != ? "
            "ORDER BY abs(m.created_at - ?), m.rowid LIMIT ?",
            (row.cube, value.lower(), row.memory_id, row.created_at, limit),
        )
        return [_row_to_version(r) for r in rows]

    def current_memories(self, cubes: list[str]) -> list[VersionRow]:
        """Current versions of every memory in ``cubes`` (any state): the snapshot policies evaluate."""
        if not cubes:
            return []
        marks = ",".join("?" * len(cubes))
        rows = self._all(
            f"SELECT {_VERSION_COLUMNS} FROM {_FROM} WHERE v.version = m.current_version AND m.cube IN ({marks}) ORDER BY m.created_at",
            cubes,
        )
        return [_row_to_version(r) for r in rows]

    # ------------------------------------------------------------------------------------------------ idempotency

    def idempotent_result(self, principal: str, key: str) -> tuple[str, str, str, int] | None:
        """What the syscall with idempotency ``key`` of ``principal`` committed: (op, request hash, memory id,
        version); None if no such syscall committed (within the retention of keys)."""
        row = self._one("SELECT op, request_hash, memory_id, version FROM idempotency WHERE principal = ? AND key = ?",
                        (principal, key))
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]), int(row[3]))

    def remember_idempotent(self, principal: str, key: str, op: str, request_hash: str, memory_id: str, version: int,
                            at: float, *, keep_s: float) -> None:
        """Record, in the syscall's own transaction, what ``key`` committed; forget keys older than ``keep_s``."""
        self._exec("DELETE FROM idempotency WHERE at < ?", (at - keep_s,))
        self._exec(
            "INSERT INTO idempotency(principal, key, op, request_hash, memory_id, version, at) VALUES (?,?,?,?,?,?,?)",
            (principal, key, op, request_hash, memory_id, version, at),
        )
