"""The shard router: one ``Transport`` over N kernel shards, each owning a set of cubes (``memos.storage.placement``).

It speaks the envelope like any transport, so ``Memos`` is unchanged over it. Each syscall goes where its data is:

- **a cube named** (``write``, ``list``, ``create_cube``, ``drop_cube``, ``cube_info``, ``grant``, ``revoke``,
  ``ingest``, ``fuse``, ``distill``/``compress`` with a cube, ``audit`` of a cube): the cube's shard. ``audit`` of
  everything pages through every shard's log by time, as ``events`` does (``_by_time``). ``create_cube`` records
  the cube in the placement table first, so it stays where it was created.
- **several cubes** (``search``, ``assemble_context``, ``generate``, ``events``, ``snapshot``): the one shard holding
  them all. ``search`` over cubes on several shards runs in two rounds and ranks as one kernel would
  (``_search_across``, ``fuse_shards``): each shard's candidates with their raw scores, fused here once by the
  kernel's own function, then each shard's chosen hits. ``events`` over several shards (or none named) are merged
  by time, with a cursor of each shard's position (``_by_time``). ``assemble_context`` and ``generate`` over
  several shards are refused (``InvalidSyscall``): a context plan or a generation cannot be merged from parts.
- **write_many**: its items split by their cube's shard, one ``write_many`` per shard in parallel, the outcomes put
  back in the items' order. Each shard's part is atomic per item, as on one kernel.
- **a memory or job id** (``read``, ``update``, ``history``, ``link`` (its source), ``migrate`` (its first id), ...):
  the shard that answered for that memory before (a bounded cache filled from every result that names memories),
  else each shard in turn until one does not answer ``not_found``. A shard without the memory changes nothing when
  it answers ``not_found``, so asking it is safe even for writes. ``related`` then reads the linked memories its
  shard does not hold (``elsewhere``: a cube move split a link) on theirs.
- **nothing to route by** (``list_cubes``, ``stats``, ``jobs``): every shard in parallel,
  their answers merged (lists concatenated in order, counts summed; latency percentiles are the worst shard's).

Syscalls are parsed (``memos.syscalls.parse_syscall``) only to find where they go; what travels is the caller's wire
dict, and a malformed one is answered by shard 0's kernel with the same ``InvalidSyscall`` as anywhere.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from memos import syscalls as sc
from memos.errors import InvalidState, InvalidSyscall, MemosError, error_from_wire
from memos.kernel.ops.search import candidate_limit
from memos.kernel.retrieval import Candidate, Fused, fuse_candidates
from memos.storage.placement import Placement
from memos.storage.sqlite import bm25
from memos.transports.envelope import Transport

#: Memory ids whose shard the router remembers (least recently used out first).
REMEMBER_IDS = 200_000

_CUBE_FIELD = {"write": "cube", "list": "cube", "grant": "cube", "revoke": "cube", "ingest": "cube", "fuse": "cube",
               "drop_cube": "name", "cube_info": "name", "distill": "cube", "compress": "cube", "audit": "cube"}
_MULTI_CUBE = {"search", "assemble_context", "generate", "events", "snapshot"}
_FAN_OUT = {"list_cubes", "stats", "jobs", "audit", "snapshot", "events"}


def _at(record: dict[str, Any]) -> datetime:
    """When an event or audit record (a wire dict) happened."""
    return datetime.fromisoformat(record["at"])


def _merge_stats(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cubes": 0, "memories": {}, "versions": 0, "bytes": {}, "syscalls": {}, "latency_ms": {}}
    for a in answers:
        out["cubes"] += a["cubes"]
        out["versions"] += a["versions"]
        for kind, states in a["memories"].items():
            into = out["memories"].setdefault(kind, {})
            for state, n in states.items():
                into[state] = into.get(state, 0) + n
        for key in ("bytes", "syscalls"):
            for name, n in a.get(key, {}).items():
                out[key][name] = out[key].get(name, 0) + n
        for op, pct in a.get("latency_ms", {}).items():  # percentiles do not add: the worst shard's
            into = out["latency_ms"].setdefault(op, {})
            for name, ms in pct.items():
                into[name] = max(into.get(name, 0.0), ms)
    return out


def _merge_snapshots(answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"at": max(a["at"] for a in answers), "memories": [m for a in answers for m in a["memories"]],
            "read_times": {k: v for a in answers for k, v in a["read_times"].items()},
            "activation_bytes": sum(a.get("activation_bytes", 0) for a in answers),
            "loaded_adapters": sum(a.get("loaded_adapters", 0) for a in answers)}


MERGE: dict[str, Callable[[Sequence[dict[str, Any]]], dict[str, Any]]] = {
    "list_cubes": lambda answers: {"cubes": sorted((c for a in answers for c in a["cubes"]), key=lambda c: c["name"])},
    "stats": _merge_stats,
    "jobs": lambda answers: {"jobs": [j for a in answers for j in a["jobs"]]},
    "snapshot": _merge_snapshots,
}


def fuse_shards(call: Any, answers: Sequence[tuple[int, dict[str, Any]]]) -> list[tuple[Candidate, Fused]]:
    """Every hit of a search over cubes on several shards, best first, from each shard's candidates (``(shard,
    ShardCandidates wire dict)``): each retriever's candidates of all shards merged by their raw scores and cut to
    the count one kernel takes (``candidate_limit``), then fused and reranked by the kernel's own function
    (``memos.kernel.retrieval.fuse_candidates``). Dense scores are cosine distances (the same embedder everywhere);
    lexical ones are bm25 computed again here over the summed statistics of the shards searched (rows, tokens,
    hits per phrase: ``memos.storage.sqlite.bm25``, bit for bit FTS5's), since each shard's own bm25 weighs words
    by its own rows. Equal raw scores keep the lower shard first. Keys are (shard, rowid)."""
    limit = candidate_limit(call.k)
    pool: dict[Hashable, Candidate] = {}
    near: dict[str, list[Hashable]] = {}
    dense: list[tuple[float, int, int, Hashable]] = []
    lexical: list[tuple[float, int, int, Hashable]] = []
    for shard, answer in answers:
        for rowid, fields in answer["pool"].items():
            key = (shard, int(rowid))
            pool[key] = Candidate(key=key, **fields)
        for memory_id, rowids in answer["neighbours"].items():
            near[memory_id] = [(shard, rowid) for rowid in rowids]
        dense += [(score, shard, i, (shard, rowid)) for i, (rowid, score) in enumerate(answer["dense"])]
    stats = [(shard, a["lexical_stats"]) for shard, a in answers if a.get("lexical_stats")]
    if stats:  # bm25 over the statistics of all the shards searched, as one kernel holding their rows scores it
        rows = sum(s["rows"] for _, s in stats)
        tokens = sum(s["tokens"] for _, s in stats)
        hits = [sum(column) for column in zip(*(s["hits"] for _, s in stats), strict=True)]
        for shard, s in stats:
            lexical += [(bm25(freqs, length, rows, tokens, hits), shard, i, (shard, int(rowid)))
                        for i, (rowid, (freqs, length)) in enumerate(s["candidates"].items())]
    dense.sort(key=lambda t: t[:3])
    lexical.sort(key=lambda t: t[:3])

    def neighbours(memory_ids: list[str]) -> dict[str, list[Candidate]]:
        return {m: [pool[key] for key in near[m]] for m in memory_ids if m in near}

    return fuse_candidates(call.query, [t[3] for t in dense[:limit]], [t[3] for t in lexical[:limit]], pool,
                           mode=call.mode, as_of=call.as_of is not None, neighbours=neighbours)


class ShardRouter:
    """A ``Transport`` over ``shards`` (one transport per shard, in shard order) placed by ``placement``."""

    def __init__(self, shards: Sequence[Transport], placement: Placement) -> None:
        if not shards:
            raise InvalidSyscall("a shard router needs at least one shard")
        self.shards = list(shards)
        self.placement = placement
        self._where: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(self.shards)), thread_name_prefix="memos-router")

    # --------------------------------------------------------------------------------------------------- plumbing

    def _shard_of(self, cube: str) -> int:
        shard = self.placement.shard_of(cube)
        if shard >= len(self.shards):
            raise InvalidSyscall(f"cube {cube!r} is placed on shard {shard}, but this router reaches "
                                 f"{len(self.shards)} shards ('memos up --shards' with the table's count)")
        return shard

    def _parallel(self, calls: Sequence[tuple[int, Callable[[Transport], Any]]]) -> list[Any]:
        if len(calls) == 1:
            shard, fn = calls[0]
            return [fn(self.shards[shard])]
        futures = [self._pool.submit(fn, self.shards[shard]) for shard, fn in calls]
        return [f.result() for f in futures]

    def _remember(self, answer: dict[str, Any], shard: int) -> None:
        """Note the shard of every memory an answer names (a memory, a list, search hits, write_many outcomes)."""
        ok = answer.get("ok")
        if not isinstance(ok, dict):
            return
        ids: list[str] = []
        if isinstance(ok.get("id"), str) and "cube" in ok:
            ids.append(ok["id"])
        for m in ok.get("memories") or ():
            if isinstance(m, dict) and isinstance(m.get("id"), str):
                ids.append(m["id"])
        for h in ok.get("hits") or ():
            ids.append(h["memory"]["id"])
        for r in ok.get("results") or ():
            if isinstance(r, dict) and r.get("id"):
                ids.append(r["id"])
        if not ids:
            return
        with self._lock:
            for memory_id in ids:
                self._where[memory_id] = shard
                self._where.move_to_end(memory_id)
            while len(self._where) > REMEMBER_IDS:
                self._where.popitem(last=False)

    def _send(self, shard: int, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
        answer = self.shards[shard].call(principal, syscall, trace_id)
        self._remember(answer, shard)
        return answer

    # ------------------------------------------------------------------------------------------------ the routes

    def call(self, principal: str, syscall: dict[str, Any], trace_id: str | None = None) -> dict[str, Any]:
        try:
            parsed = sc.parse_syscall(syscall)
        except InvalidSyscall:
            return self.shards[0].call(principal, syscall, trace_id)  # its kernel answers the same error
        try:
            return self._route(parsed, principal, syscall, trace_id)
        except MemosError as exc:
            return {"error": exc.to_wire()}

    def _route(self, call: Any, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
        op = call.op
        if op == "create_cube":
            return self._send(self.placement.place(call.name), principal, syscall, trace_id)
        if op == "write_many":
            return self._write_many(principal, syscall, trace_id)
        field = _CUBE_FIELD.get(op)
        if field is not None and getattr(call, field) is not None and not (op == "audit" and isinstance(call.since, str)):
            return self._send(self._shard_of(getattr(call, field)), principal, syscall, trace_id)
        if op in _MULTI_CUBE and getattr(call, "cubes", ()) and not (op == "events" and isinstance(call.since, str)):
            return self._multi_cube(call, principal, syscall, trace_id)
        if op in ("events", "audit") and len(self.shards) > 1:
            return self._by_time(call, principal, syscall, trace_id)
        if op in _FAN_OUT:
            return self._fan_out(op, principal, syscall, trace_id)
        if op == "cancel":
            return self._probe(range(len(self.shards)), principal, syscall, trace_id)
        answer = self._by_memory(self._memory_of(call), principal, syscall, trace_id)
        if op == "related" and answer.get("ok", {}).get("elsewhere") and len(self.shards) > 1:
            answer = self._resolve_elsewhere(call, answer, principal, trace_id)
        return answer

    def _resolve_elsewhere(self, call: Any, answer: dict[str, Any], principal: str,
                           trace_id: str | None) -> dict[str, Any]:
        """``related``'s links to memories on other shards (``elsewhere``: a move split them), each read there as
        the caller (``history``: counts no read; a memory it may not read, or purged, is left out) and put in its
        place in the list."""
        ok = answer["ok"]
        related, offset, missing = list(ok["related"]), 0, []
        for link in ok["elsewhere"]:
            found = self._by_memory(link["id"], principal, {"op": "history", "id": link["id"]}, trace_id)
            versions = found.get("ok", {}).get("memories") or []
            if not versions:
                if found.get("error", {}).get("code") == "not_found":
                    missing.append(link)
                continue
            memory = versions[-1]
            if not call.include_inactive and memory["state"] != "active":
                continue
            related.insert(link["position"] + offset, {"memory": memory, "relation": link["relation"],
                                                       "direction": link["direction"]})
            offset += 1
        return {"ok": {**ok, "related": related[: call.k], "elsewhere": missing}}

    def _multi_cube(self, call: Any, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
        groups: dict[int, list[str]] = {}
        for cube in dict.fromkeys(call.cubes):
            groups.setdefault(self._shard_of(cube), []).append(cube)
        if len(groups) == 1:
            return self._send(next(iter(groups)), principal, syscall, trace_id)
        if call.op == "events":
            return self._by_time(call, principal, syscall, trace_id)
        if call.op == "snapshot":
            parts = [(shard, {**syscall, "cubes": cubes}) for shard, cubes in sorted(groups.items())]
            return self._merged("snapshot", parts, principal, trace_id)
        if call.op != "search":
            raise InvalidSyscall(f"{call.op} over cubes on different shards ({', '.join(map(str, sorted(groups)))}) "
                                 "is not supported: name cubes of one shard, or move them together "
                                 "('memos cube move')", shards=sorted(groups))
        return self._search_across(call, groups, principal, syscall, trace_id)

    def _search_across(self, call: Any, groups: dict[int, list[str]], principal: str, syscall: dict[str, Any],
                       trace_id: str | None) -> dict[str, Any]:
        """A search over cubes on several shards, in two rounds: each shard's candidates (``shard_phase=
        "candidates"``), fused here once (``fuse_shards``); then each shard loads the hits chosen on it, counts
        their reads and expands them (``shard_phase="hits"``), and the hits are put in the fused order."""
        parts = sorted(groups.items())
        asks = [(shard, {**syscall, "cubes": cubes, "shard_phase": "candidates", "shard_hits": []})
                for shard, cubes in parts]
        answers = self._parallel([(shard, lambda t, s=s: t.call(principal, s, trace_id)) for shard, s in asks])
        for answer in answers:
            if "error" in answer:
                return answer
        top = fuse_shards(call, [(shard, a["ok"]) for (shard, _), a in zip(parts, answers, strict=True)])[: call.k]
        chosen: dict[int, list[dict[str, Any]]] = {}
        for c, item in top:
            shard, rowid = c.key  # type: ignore[misc]
            chosen.setdefault(shard, []).append({"rowid": rowid, "score": item.score, "dense_rank": item.dense_rank,
                                                 "lexical_rank": item.lexical_rank})
        asks = [(shard, {**syscall, "cubes": cubes, "shard_phase": "hits", "shard_hits": chosen[shard]})
                for shard, cubes in parts if shard in chosen]
        answers = self._parallel([(shard, lambda t, s=s: t.call(principal, s, trace_id)) for shard, s in asks])
        found: dict[str, dict[str, Any]] = {}
        for (shard, _), answer in zip(asks, answers, strict=True):
            if "error" in answer:
                return answer
            self._remember(answer, shard)
            found.update((h["memory"]["id"], h) for h in answer["ok"]["hits"])
        order = {c.memory_id: i for i, (c, _) in enumerate(top)}
        hits = [found[c.memory_id] for c, _ in top if c.memory_id in found]
        # Expansion (``expand``) adds linked memories after the hits, in the order of the hits that brought them
        # (``via`` ends with that hit's id); then all by score, as expand_hits orders them on one kernel.
        added = sorted((h for m, h in found.items() if m not in order),
                       key=lambda h: order.get(str(h.get("via") or "").rsplit(" ", 1)[-1], len(order)))
        merged = sorted([*hits, *added], key=lambda h: -h["score"])
        return {"ok": {"hits": merged[: call.k]}}

    def _by_time(self, call: Any, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
        """``events`` or ``audit`` of every shard (or of the shards holding the cubes named), merged by time, with a
        cursor of each shard's position (``shards:<seq of shard 0>,<seq of shard 1>,...``): each shard is asked
        for its records after its position, the first ``limit`` of them all by time are answered, and each shard's
        position moves to the last of its records answered, so a page never skips or repeats one. With ``latest``
        (events): the newest ``limit`` of them all, and every shard's position moves to its end."""
        n = len(self.shards)
        items, cursor = ("events", "next_seq") if call.op == "events" else ("records", "next_since")
        if isinstance(call.since, str):
            positions = [int(x) for x in call.since.removeprefix("shards:").split(",")]
            if len(positions) != n:
                raise InvalidSyscall(f"the cursor {call.since!r} has {len(positions)} shard positions; this "
                                     f"deployment has {n} shards")
        elif call.since == 0:
            positions = [0] * n
        else:
            raise InvalidSyscall(f"since={call.since} is one kernel's cursor; over {n} kernel shards pass the "
                                 f"{cursor} of a previous page (shards:...), or 0 to start")
        named = call.cubes if call.op == "events" else (call.cube,) if call.cube else ()
        groups: dict[int, list[str]] = {}
        for cube in dict.fromkeys(named):
            groups.setdefault(self._shard_of(cube), []).append(cube)
        asks = [(shard, {**syscall, "since": positions[shard],
                         **({"cubes": groups[shard]} if groups and call.op == "events" else {})})
                for shard in range(n) if not groups or shard in groups]
        answers = self._parallel([(shard, lambda t, s=s: t.call(principal, s, trace_id)) for shard, s in asks])
        for answer in answers:
            if "error" in answer:
                return answer
        merged = sorted(((_at(e), shard, i, e) for (shard, _), a in zip(asks, answers, strict=True)
                         for i, e in enumerate(a["ok"][items])), key=lambda t: t[:3])
        latest = getattr(call, "latest", False)
        taken = merged[-call.limit:] if latest else merged[: call.limit]
        if latest:
            for (shard, _), a in zip(asks, answers, strict=True):
                positions[shard] = max(positions[shard], int(a["ok"][cursor]))
        for _, shard, _, e in taken:
            positions[shard] = max(positions[shard], int(e["seq"]))
        return {"ok": {items: [e for *_, e in taken], cursor: "shards:" + ",".join(map(str, positions))}}

    def _fan_out(self, op: str, principal: str, syscall: dict[str, Any], trace_id: str | None) -> dict[str, Any]:
        return self._merged(op, [(shard, syscall) for shard in range(len(self.shards))], principal, trace_id)

    def _merged(self, op: str, parts: list[tuple[int, dict[str, Any]]], principal: str,
                trace_id: str | None) -> dict[str, Any]:
        answers = self._parallel([(shard, lambda t, s=s: t.call(principal, s, trace_id)) for shard, s in parts])
        for answer in answers:
            if "error" in answer:
                return answer
        if len(answers) == 1:
            return answers[0]
        return {"ok": MERGE[op]([a["ok"] for a in answers])}

    def _write_many(self, principal: str, syscall: dict[str, Any],
                    trace_id: str | None) -> dict[str, Any]:
        items = syscall["items"]
        by_shard: dict[int, list[int]] = {}
        for i, item in enumerate(items):
            # An item is checked by the kernel that writes it; one without a cube fails there alone (on shard 0).
            cube = item.get("cube") if isinstance(item, dict) else None
            by_shard.setdefault(self._shard_of(cube) if isinstance(cube, str) else 0, []).append(i)
        if len(by_shard) == 1:
            return self._send(next(iter(by_shard)), principal, syscall, trace_id)
        parts = sorted(by_shard.items())
        answers = self._parallel([
            (shard, lambda t, idx=idx: t.call(principal, {**syscall, "items": [items[i] for i in idx]}, trace_id))
            for shard, idx in parts])
        results: list[Any] = [None] * len(items)
        for (shard, idx), answer in zip(parts, answers, strict=True):
            if "error" in answer:  # the whole call was refused (before any item): the same on every shard
                return answer
            self._remember(answer, shard)
            for i, outcome in zip(idx, answer["ok"]["results"], strict=True):
                results[i] = outcome
        return {"ok": {"results": results, "written": sum(1 for r in results if not r.get("error")),
                       "failed": sum(1 for r in results if r.get("error"))}}

    @staticmethod
    def _memory_of(call: Any) -> str:
        for name in ("id", "source"):
            if isinstance(getattr(call, name, None), str):
                return str(getattr(call, name))
        ids = getattr(call, "ids", ()) or ()
        if ids:
            return str(ids[0])
        if getattr(call, "replaces", None):
            return str(call.replaces)
        memory = getattr(call, "memory", ()) or ()
        if memory:
            return str(memory[0])
        return ""

    def _by_memory(self, memory_id: str, principal: str, syscall: dict[str, Any],
                   trace_id: str | None) -> dict[str, Any]:
        with self._lock:
            known = self._where.get(memory_id)
        order = list(range(len(self.shards)))
        if known is not None:  # the shard that answered before first; the others if it moved since
            order.remove(known)
            order.insert(0, known)
        return self._probe(order, principal, syscall, trace_id)

    def _probe(self, order: Sequence[int], principal: str, syscall: dict[str, Any],
               trace_id: str | None) -> dict[str, Any]:
        first: dict[str, Any] | None = None
        for shard in order:
            answer = self._send(shard, principal, syscall, trace_id)
            if answer.get("error", {}).get("code") != "not_found":
                return answer
            first = first or answer
        assert first is not None
        return first

    def call_batch(self, principal: str, syscalls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each syscall routed alone, in order (as the kernel runs a batch: each alone)."""
        return [self.call(principal, s) for s in syscalls]

    # --------------------------------------------------------------------------------- every shard at once

    def _each(self, method: str, *args: Any) -> list[Any]:
        return self._parallel([(shard, lambda t: getattr(t, method)(*args)) for shard in range(len(self.shards))])

    def ping(self) -> list[dict[str, Any]]:
        """Every shard's ping, in shard order."""
        return self._each("ping")

    def policy_admin(self, command: str, arg: str | None = None) -> Any:
        """The policy command on every shard (each runs the same policies over its own cubes); shard 0's answer."""
        return self._each("policy_admin", command, arg)[0]

    def run_policy(self, name: str | None = None) -> list[dict[str, Any]]:
        return [report for answer in self._each("run_policy", name) for report in answer]

    def doctor(self, repair: bool = False) -> dict[str, Any]:
        reports = self._each("doctor", repair)
        bad = [r["sqlite_integrity"] for r in reports if r["sqlite_integrity"] != "ok"]
        return {"sqlite_integrity": bad[0] if bad else "ok",
                "pending_index": sum(r["pending_index"] for r in reports), "shards": reports}

    # ----------------------------------------------------------------------------------------- moving a cube

    def move_cube(self, cube: str, target: int) -> dict[str, Any]:
        """Move ``cube`` and all its data to shard ``target`` (``memos.kernel.moves``), journaled in the placement
        table: export from the source, import on the target, drop from the source only if nothing was written to
        the cube meanwhile, then switch the placement. Between the drop and the switch (one table write) calls to
        the cube answer ``not_found``. A move interrupted by a crash is finished or undone by ``recover_moves``,
        which every move runs first. Returns what was done.

        Raises:
            InvalidSyscall: no such shard, or a move of this cube is journaled already. NotFound: no such cube.
            InvalidState: a job or migration on the cube runs, or the cube was written to during the move (then
                nothing moved; try again).
        """
        self.recover_moves()
        if not 0 <= target < len(self.shards):
            raise InvalidSyscall(f"no shard {target}: this router reaches shards 0..{len(self.shards) - 1}")
        source = self._shard_of(cube)
        if source == target:
            return {"cube": cube, "from": source, "to": target, "moved": False, "detail": "already there"}
        self.placement.begin_move(cube, target)
        try:
            exported = self.shards[source].shard_admin("export_cube", cube)  # type: ignore[attr-defined]
            versions = self.shards[target].shard_admin("import_cube", exported)  # type: ignore[attr-defined]
        except BaseException:
            self._undo(cube, target)
            raise
        if not self.shards[source].shard_admin("drop_moved_cube", cube, exported["fingerprint"]):  # type: ignore[attr-defined]
            self._undo(cube, target)
            raise InvalidState(f"cube {cube!r} was written to during the move: nothing moved; try again", cube=cube)
        self.placement.end_move(cube, moved=True)
        with self._lock:  # its memories now answer from the target
            for memory_id in [m for m, s in self._where.items() if s == source]:
                self._where.pop(memory_id)
        return {"cube": cube, "from": source, "to": target, "moved": True, "versions": versions,
                "memories": len(exported["rows"]["memories"]), "payload_files": len(exported["blobs"])}

    def _undo(self, cube: str, target: int) -> None:
        self.shards[target].shard_admin("discard_copy", cube)  # type: ignore[attr-defined]
        self.placement.end_move(cube, moved=False)

    def recover_moves(self) -> list[dict[str, Any]]:
        """Finish or undo the moves a crash interrupted (journaled in the placement table): a cube still on its
        source loses the target's partial copy; one already dropped from its source is switched to its target."""
        done = []
        self.placement.refresh()
        for cube, move in list(self.placement.moves.items()):
            on_source = any(c["name"] == cube for c in self._cubes_of(move["from"]))
            if on_source:
                self._undo(cube, move["to"])
            else:
                self.placement.end_move(cube, moved=True)
            done.append({"cube": cube, **move, "finished": not on_source})
        return done

    def _cubes_of(self, shard: int) -> list[dict[str, Any]]:
        answer = self.shards[shard].call("system", {"op": "list_cubes"})
        if "error" in answer:
            raise error_from_wire(answer["error"])
        return list(answer["ok"]["cubes"])

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for shard in self.shards:
            shard.close()
