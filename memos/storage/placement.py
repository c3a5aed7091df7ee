"""Where each cube lives when the kernel runs as shards: the placement table of ``<home>/shards/``.

A sharded data dir is ``<home>/shards/<k>/`` for shard ``k`` (each a whole data dir of its own: SQLite file, Chroma
dir, blobs, ``owner.lock``; one shard kernel owns it, as one kernel owns an unsharded home) plus this table,
``<home>/shards/placement.json``::

    {"shards": 2, "cubes": {"team/a": 0, "team/b": 1}}

Every cube is recorded when it is created (``place``): its shard is then explicit, so adding shards later never
moves a cube. A cube the table does not name (a name nobody created yet) maps to ``default_shard``, a stable hash of
its name (crc32 modulo the shard count), which is also where ``place`` puts a new cube unless told otherwise.
Changes are read-modify-write under an exclusive ``flock`` on ``placement.lock`` and written to a temporary file,
fsynced and renamed: a reader sees the old table or the new one, never half of one. Readers reload the table when
its modification time changes (``refresh``), so every router on the machine sees a move.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memos.errors import InvalidSyscall

TABLE = "placement.json"
LOCK = "placement.lock"
MAX_SHARDS = 64


def shards_dir(home: str | Path) -> Path:
    return Path(home) / "shards"


def shard_home(home: str | Path, shard: int) -> Path:
    """The data dir of shard ``shard`` of the sharded data dir ``home``."""
    return shards_dir(home) / str(shard)


def default_shard(cube: str, shards: int) -> int:
    """The shard of a cube nobody placed: a stable hash of its name (the same in every process and release)."""
    return zlib.crc32(cube.encode()) % shards


class Placement:
    """The placement table of a sharded data dir (see the module docstring)."""

    def __init__(self, home: str | Path) -> None:
        self.dir = shards_dir(home)
        self.path = self.dir / TABLE
        self._mtime: int | None = None
        self.shards = 0
        self.cubes: dict[str, int] = {}
        self.moves: dict[str, dict[str, Any]] = {}
        self.refresh()

    @classmethod
    def create(cls, home: str | Path, shards: int) -> Placement:
        """The table of ``home`` with ``shards`` shards: made if there is none; one with fewer shards grows (cubes
        already placed stay where they are).

        Raises:
            InvalidSyscall: ``shards`` is out of 1..MAX_SHARDS, or fewer than the table already has (a shard
                holding cubes cannot be taken away; move its cubes first).
        """
        if not 1 <= shards <= MAX_SHARDS:
            raise InvalidSyscall(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
        table = cls(home)
        with table._locked() as data:
            if data["shards"] > shards:
                raise InvalidSyscall(f"{table.dir} has {data['shards']} shards; it cannot shrink to {shards} (move "
                                     "their cubes to other shards first)", shards=data["shards"])
            data["shards"] = shards
        return table

    @classmethod
    def exists(cls, home: str | Path) -> bool:
        return (shards_dir(home) / TABLE).exists()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"shards": 0, "cubes": {}, "moves": {}}
        return {"shards": int(data["shards"]), "cubes": {str(k): int(v) for k, v in data["cubes"].items()},
                "moves": {str(k): dict(v) for k, v in data.get("moves", {}).items()}}

    def refresh(self) -> None:
        """Reload the table if it changed on disk since the last read (one ``stat`` when it did not)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime or mtime is None:
            data = self._read()
            self.shards, self.cubes, self.moves, self._mtime = data["shards"], data["cubes"], data["moves"], mtime

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """The table for a change, under the lock; written back (atomically) when the block ends without error."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            data = self._read()
            yield data
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            os.close(fd)
        self._mtime = None
        self.refresh()

    def shard_of(self, cube: str) -> int:
        """The shard holding ``cube``: recorded, else its default (a cube nobody created lands there when it is)."""
        self.refresh()
        if not self.shards:
            raise InvalidSyscall(f"{self.dir} holds no placement table: start the shards first ('memos up --shards N')")
        return self.cubes.get(cube, default_shard(cube, self.shards))

    def place(self, cube: str, shard: int | None = None) -> int:
        """Record ``cube`` on ``shard`` (default: where it is recorded already, else its default shard); returns it.

        Raises:
            InvalidSyscall: ``shard`` is not a shard of this table.
        """
        with self._locked() as data:
            if shard is not None and not 0 <= shard < data["shards"]:
                raise InvalidSyscall(f"no shard {shard}: this data dir has shards 0..{data['shards'] - 1}", shard=shard)
            chosen = shard if shard is not None else data["cubes"].get(cube, default_shard(cube, data["shards"]))
            data["cubes"][cube] = chosen
        return chosen

    def begin_move(self, cube: str, target: int) -> int:
        """Journal a move of ``cube`` to ``target`` (``{"from", "to"}`` under ``moves``); returns its source shard.

        Raises:
            InvalidSyscall: ``target`` is no shard, or the cube is being moved already.
        """
        with self._locked() as data:
            if not 0 <= target < data["shards"]:
                raise InvalidSyscall(f"no shard {target}: this data dir has shards 0..{data['shards'] - 1}",
                                     shard=target)
            if cube in data["moves"]:
                raise InvalidSyscall(f"cube {cube!r} is being moved already ({data['moves'][cube]}); 'memos cube "
                                     "move' finishes or undoes an interrupted move first", cube=cube)
            source = data["cubes"].get(cube, default_shard(cube, data["shards"]))
            data["moves"][cube] = {"from": source, "to": target}
        return int(source)

    def end_move(self, cube: str, *, moved: bool) -> None:
        """Close the journal entry of ``cube``'s move: the cube now on its target (``moved``) or still on its
        source."""
        with self._locked() as data:
            move = data["moves"].pop(cube, None)
            if move is not None:
                data["cubes"][cube] = move["to"] if moved else move["from"]

    def forget(self, cube: str) -> None:
        """Drop ``cube``'s record (after ``drop_cube``): a cube created again under that name is placed anew."""
        with self._locked() as data:
            data["cubes"].pop(cube, None)
