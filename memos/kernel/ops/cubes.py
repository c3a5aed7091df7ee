"""Cube syscalls: create, drop, list, describe, grant and revoke rights."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memos import syscalls as sc
from memos.errors import AlreadyExists, InvalidSyscall, NotFound
from memos.kernel import events as ev
from memos.kernel.authz import readable_cubes, require_cube
from memos.kernel.context import CallContext
from memos.kernel.versions import delete_blob
from memos.types import Ack, CubeInfo, CubeList, Grant, Right, from_epoch


def cube_info(ctx: CallContext, name: str) -> CubeInfo:
    store = ctx.kernel.store
    cube = store.get_cube(name)
    if cube is None:
        raise NotFound(f"cube {name!r} does not exist", cube=name)
    counts: Counter[str] = Counter()
    total = 0
    for _, _, state, n, size in store.counts([name]):
        counts[state] += n
        total += size
    return CubeInfo(
        name=cube.name, owner=cube.owner, description=cube.description, created_at=from_epoch(cube.created_at),
        grants=tuple(Grant(principal=p, right=r) for p, r in store.grants(name)),
        memories=dict(counts), bytes=total, incarnation=store.cube_incarnation(name),
    )


def create_cube(ctx: CallContext, call: sc.CreateCube) -> CubeInfo:
    store = ctx.kernel.store
    if store.get_cube(call.name) is not None:
        if call.exist_ok:
            require_cube(ctx, call.name, Right.READ)
            return cube_info(ctx, call.name)
        raise AlreadyExists(f"cube {call.name!r} already exists", cube=call.name)
    now = ctx.kernel.clock.now()
    store.insert_cube(call.name, ctx.principal, call.description, now)
    store.set_grant(call.name, ctx.principal, Right.ADMIN.value)
    ctx.audit_ok(call.op, call.name)
    ctx.emit(ev.CubeCreated(cube=call.name, principal=ctx.principal))
    return cube_info(ctx, call.name)


def drop_cube(ctx: CallContext, call: sc.DropCube) -> Ack:
    require_cube(ctx, call.name, Right.ADMIN)
    kernel, store = ctx.kernel, ctx.kernel.store
    paths = store.cube_payload_paths(call.name)
    count = sum(n for _, _, _, n, _ in store.counts([call.name]))
    # Recorded before the cube goes, so the records belong to this incarnation of the name.
    ctx.audit_ok(call.op, call.name, detail=f"purged {count} memories")
    ctx.emit(ev.CubeDropped(cube=call.name, principal=ctx.principal, purged=count))
    store.delete_cube(call.name)
    ctx.after_commit(store.erase_freed)
    ctx.after_commit(lambda: kernel.call_stats.forget_cube(call.name))
    for path in sorted(paths):  # the payload files of every version of every memory
        ctx.after_commit(lambda p=Path(path): delete_blob(kernel, p))
    return Ack(detail=f"dropped {call.name} and {count} memories")


def list_cubes(ctx: CallContext, call: sc.ListCubes) -> CubeList:
    return CubeList(cubes=tuple(cube_info(ctx, c) for c in readable_cubes(ctx)))


def get_cube(ctx: CallContext, call: sc.GetCube) -> CubeInfo:
    require_cube(ctx, call.name, Right.READ)
    return cube_info(ctx, call.name)


def grant(ctx: CallContext, call: sc.GrantRight) -> CubeInfo:
    require_cube(ctx, call.cube, Right.ADMIN)
    store = ctx.kernel.store
    owner = store.get_cube(call.cube).owner  # type: ignore[union-attr]
    if call.principal == owner and call.right_ != Right.ADMIN:
        raise InvalidSyscall(f"{owner} owns cube {call.cube!r}; the owner's admin right cannot be lowered", cube=call.cube)
    store.set_grant(call.cube, call.principal, call.right_.value)
    ctx.audit_ok(call.op, call.cube, detail=f"{call.principal}={call.right_.value}")
    ctx.emit(ev.Granted(cube=call.cube, principal=ctx.principal, to=call.principal, right=call.right_.value))
    return cube_info(ctx, call.cube)


def revoke(ctx: CallContext, call: sc.RevokeRight) -> CubeInfo:
    require_cube(ctx, call.cube, Right.ADMIN)
    store = ctx.kernel.store
    owner = store.get_cube(call.cube).owner  # type: ignore[union-attr]
    if call.principal == owner:
        raise InvalidSyscall(f"{owner} owns cube {call.cube!r}; the owner's admin right cannot be revoked", cube=call.cube)
    store.delete_grant(call.cube, call.principal)
    ctx.audit_ok(call.op, call.cube, detail=call.principal)
    ctx.emit(ev.Revoked(cube=call.cube, principal=ctx.principal, frm=call.principal))
    return cube_info(ctx, call.cube)


HANDLERS: dict[type[Any], Callable[[CallContext, Any], Any]] = {
    sc.CreateCube: create_cube,
    sc.DropCube: drop_cube,
    sc.ListCubes: list_cubes,
    sc.GetCube: get_cube,
    sc.GrantRight: grant,
    sc.RevokeRight: revoke,
}
