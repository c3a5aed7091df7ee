"""Moving a cube between kernel shards: the three steps each kernel takes (the router's ``move_cube`` runs them in
order under the placement table's journal, ``memos.transports.router``).

1. ``export_cube`` (source): every row of the cube (``SqliteStore.cube_rows``: the cube, grants, memories, every
   version, access log, links from and to its memories, derivations, idempotency keys, finished migrations, audit and events), its
   payload files' bytes, and a fingerprint of the cube's state, read in one transaction. Refused while a migration
   or a job on the cube runs.
2. ``import_cube`` (target): the payload files written (temporary name, fsync, rename) under the target's blob dir,
   then every row inserted in one transaction, versions re-numbered in the same order, each non-deleted one given
   its FTS row and indexed (embedded again by the target: an index entry is derived data). All or nothing.
3. ``drop_moved_cube`` (source): in one transaction, the fingerprint is compared with the export's, and the cube is
   dropped only if nothing was written to it since (``drop_cube`` as ``system``, audited). If something was, nothing
   is dropped and the move is undone (the target's copy dropped): no write is ever lost to a move.

Links are kept by both shards when they cross the move: a link between a moved memory and a memory that stays is
copied with the cube (``cube_rows``: links from and to its memories) and kept on the shard it leaves
(``_drop_keeping_links``), so each side still lists it; the router resolves the memory that is now on another
shard (``ShardRouter`` ``related``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from memos import syscalls as sc
from memos.errors import AlreadyExists, InvalidState, NotFound
from memos.kernel.context import CallContext
from memos.kernel.ops.cubes import drop_cube

MOVER = "system"


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def export_cube(kernel: Any, cube: str) -> dict[str, Any]:
    """The cube's rows, payload files and fingerprint (step 1).

    Raises:
        NotFound: no such cube here. InvalidState: a migration or a job on the cube is running.
    """
    store = kernel.store
    with kernel.lock:
        if store.get_cube(cube) is None:
            raise NotFound(f"cube {cube!r} is not on this shard", cube=cube)
        running = [j.id for j in kernel.jobs.all() if cube in j.cubes and j.state == "running"]
        if running:
            raise InvalidState(f"cube {cube!r} has running jobs ({', '.join(running)}): move it when they end",
                               cube=cube, jobs=running)
        with store.transaction():
            rows = store.cube_rows(cube)
            fingerprint = store.cube_fingerprint(cube)
    if any(m[8] is None for m in rows["migrations"]):  # ended_at: a migration not finished (or being recovered)
        raise InvalidState(f"cube {cube!r} has a migration in progress: move it when it ends", cube=cube)
    blobs: dict[str, bytes] = {}
    for row in rows["versions"]:
        if row[12]:
            path = json.loads(row[12])["path"]
            if path not in blobs and Path(path).exists():
                blobs[path] = Path(path).read_bytes()
    return {"cube": cube, "rows": rows, "fingerprint": fingerprint, "blob_dir": str(kernel.blob_dir), "blobs": blobs}


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".moving")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def import_cube(kernel: Any, exported: dict[str, Any]) -> int:
    """Insert an exported cube (step 2); returns the versions inserted.

    Raises:
        AlreadyExists: a cube of that name is on this shard already.
    """
    cube, source_dir = exported["cube"], Path(exported["blob_dir"])
    if kernel.store.get_cube(cube) is not None:
        raise AlreadyExists(f"cube {cube!r} is already on this shard", cube=cube)

    def here(path: str) -> Path:
        p = Path(path)
        rel = p.relative_to(source_dir) if p.is_relative_to(source_dir) else Path("moved") / p.name
        return Path(kernel.blob_dir) / rel

    written = []
    try:
        for path, data in exported["blobs"].items():
            _write_file(here(path), data)
            written.append(here(path))

        def insert() -> int:
            if kernel.store.get_cube(cube) is not None:
                raise AlreadyExists(f"cube {cube!r} is already on this shard", cube=cube)
            return kernel.store.insert_cube_rows(exported["rows"], payload_path=here)

        return int(kernel.in_transaction(CallContext(kernel, MOVER), insert))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def drop_moved_cube(kernel: Any, cube: str, fingerprint: Any) -> bool:
    """Drop the cube from this (source) shard if nothing was written to it since ``export_cube`` (step 3); returns
    whether it was dropped."""
    ctx = CallContext(kernel, MOVER)

    def drop() -> bool:
        if not _same(kernel.store.cube_fingerprint(cube), fingerprint):
            return False
        _drop_keeping_links(ctx, cube)
        return True

    return bool(kernel.in_transaction(ctx, drop))


def discard_copy(kernel: Any, cube: str) -> None:
    """Drop the target's copy of a move that did not complete."""
    if kernel.store.get_cube(cube) is not None:
        ctx = CallContext(kernel, MOVER)
        kernel.in_transaction(ctx, lambda: _drop_keeping_links(ctx, cube))


def _drop_keeping_links(ctx: CallContext, cube: str) -> None:
    """Drop the cube, but keep its links with the memories of other cubes here: those memories stay, and their
    links name memories that now live on another shard (the router resolves them there: ``related``)."""
    across = ctx.kernel.store.links_across(cube)
    drop_cube(ctx, sc.DropCube(name=cube))
    ctx.kernel.store.restore_links(across)
