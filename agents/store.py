"""memos as a LangGraph ``BaseStore``: any LangGraph app gets versions, provenance and ACLs for its long-term store.

Mapping (see memos.agents.namespaces for the label encoding):
- **namespace = cube.** ``("team", "research")`` is the cube ``team/research`` (under the store's optional
  ``root``). The store acts as its client's principal: it reads what that principal may read, a put creates the
  cube if it is missing (the principal owns it), and refusals are the kernel's typed errors (``PermissionDenied``),
  audited like any syscall.
- **item = memory.** A put writes a plaintext memory whose content is the value as JSON and whose metadata is
  ``{"store_key": key}`` (plus ``"thread"`` inside a LangGraph run); a put of an existing key writes the next
  version of the same memory (``history`` shows every value and who put it); a delete (``PutOp`` with value None)
  tombstones it, and a later put of the key starts a new memory. Inside a graph run, provenance names the thread
  (``source_refs`` ``thread/<thread_id>``).
- **Memories that the store did not write are items too**, so a LangGraph app sees what agents remembered with
  the memory tools: key = the memory id, value = ``{"content", "author", "tags"}``. A put to such a key updates
  that memory into a store item.
- ``created_at`` is the memory's creation, ``updated_at`` its current version's.

Semantics, from LangGraph's documented store contract:
- ``get`` -> the item or None. ``search(prefix, query=, filter=, limit=, offset=)`` covers every readable cube
  whose namespace starts with ``prefix``; with a query it is memos' hybrid search (dense + lexical, fused by
  reciprocal rank: at most ``MAX_K`` candidates are ranked, scores are the fused scores), without one it lists
  items in namespace order, oldest first. ``filter`` matches the value like LangGraph's reference store (exact
  values, nested objects, ``$eq $ne $gt $gte $lt $lte``). ``list_namespaces`` lists readable namespaces holding
  at least one active item, sorted, with ``prefix``/``suffix`` (``*`` wildcards), ``max_depth``, ``limit``, ``offset``.
- The ops of a batch run in order, each seeing the effects of the ones before.
- ``get``, ``put`` (which reads the key's memory) and ``search`` with a query count as uses of the memories
  they touch (uses feed lifecycle policies); listing (``search`` without a query) does not.
- Not supported: TTLs (``ttl`` raises NotImplementedError: memos lifecycle policies archive and forget instead)
  and per-item ``index`` field selection (every memory's whole content is indexed; ``index`` is ignored).

Finding a key's memory: the store keeps a key -> memory id map per cube, built by listing the cube once and
verified on every use (the memory must still be active and carry the key), so changes made by other processes
are seen; a miss lists the cube again. Two stores creating the same new key at the same moment can make two
memories; ``get`` then returns the most recently updated one.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    validate_op_namespace,
)

from memos.agents.namespaces import NamespaceMap
from memos.agents.provenance import message_ref, thread_of
from memos.client import Memos
from memos.errors import NotFound, PermissionDenied
from memos.syscalls import MAX_K
from memos.types import CubeInfo, Memory, State

STORE_KEY = "store_key"
_PAGE = 1000  # the list syscall's largest page


class MemosStore(BaseStore):
    """A LangGraph store over a memos client (its principal is the store's identity).

    Args:
        client: ``runtime.client("app:chat")`` or ``Memos.embedded(...)``.
        root: a cube-name prefix under which namespaces live (default: none, namespaces are cube names).
    """

    def __init__(self, client: Memos, *, root: str | None = None) -> None:
        self.client = client
        self.namespaces = NamespaceMap(root)
        self._ids: dict[tuple[str, str], str] = {}  # (cube, key) -> memory id; a hint, verified on use
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------------- batch

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in order; one result per op (None for puts).

        Raises:
            InvalidNamespaceError: a label is empty, has a period, or cannot be a cube name (puts only: a get or
                search of a namespace that cannot exist finds nothing).
            PermissionDenied: the principal lacks the right on an existing namespace's cube.
            NotImplementedError: a put with a TTL.
            ValueError: a value that is not JSON, or an unknown filter operator.
        """
        results: list[Result] = []
        for op in ops:
            validate_op_namespace(op)
            if isinstance(op, GetOp):
                results.append(self._get(op))
            elif isinstance(op, PutOp):
                self._put(op)
                results.append(None)
            elif isinstance(op, SearchOp):
                results.append(self._search(op))
            elif isinstance(op, ListNamespacesOp):
                results.append(self._list_namespaces(op))
            else:
                raise ValueError(f"unknown store operation {type(op).__name__}")
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """``batch`` in a worker thread (the client is synchronous); same contract."""
        return await asyncio.to_thread(self.batch, list(ops))

    # ---------------------------------------------------------------------------------------------- items

    def _item(self, memory: Memory, namespace: tuple[str, ...], score: float | None = None) -> SearchItem:
        key = self._key_of(memory)
        value = _stored_value(memory) if STORE_KEY in memory.metadata else None
        if value is None:
            value = {"content": memory.content, "author": memory.provenance.author, "tags": list(memory.tags)}
        return SearchItem(namespace=namespace, key=key, value=value, created_at=memory.created_at,
                          updated_at=memory.updated_at, score=score)

    @staticmethod
    def _key_of(memory: Memory) -> str:
        key = memory.metadata.get(STORE_KEY)
        return key if isinstance(key, str) else memory.id

    def _scan(self, cube: str) -> list[Memory]:
        """Every active memory of ``cube``, oldest first (empty if the cube does not exist); refreshes the map.

        Raises:
            PermissionDenied: the principal cannot read the cube.
        """
        memories: list[Memory] = []
        try:
            while page := self.client.list(cube, limit=_PAGE, offset=len(memories)):
                memories.extend(page)
                if len(page) < _PAGE:
                    break
        except NotFound:
            return []
        newest: dict[str, Memory] = {}
        for m in memories:
            key = self._key_of(m)
            if key not in newest or m.updated_at >= newest[key].updated_at:
                newest[key] = m
        with self._lock:
            for key in [k for c, k in self._ids if c == cube]:
                del self._ids[(cube, key)]
            self._ids.update({(cube, key): m.id for key, m in newest.items()})
        return memories

    def _find(self, cube: str, key: str) -> Memory | None:
        """The active memory holding ``key`` in ``cube``, or None. Found memories are read (a get is a use)."""
        with self._lock:
            known = self._ids.get((cube, key))
        if known is not None:
            try:
                memory = self.client.read(known)
            except NotFound:
                memory = None
            if memory is not None and memory.state == State.ACTIVE and self._key_of(memory) == key:
                return memory
        self._scan(cube)
        with self._lock:
            found = self._ids.get((cube, key))
        return None if found is None else self.client.read(found)

    def _get(self, op: GetOp) -> Item | None:
        try:
            cube = self.namespaces.cube(op.namespace)
        except ValueError:  # a namespace no cube can hold has no items
            return None
        memory = self._find(cube, op.key)
        return None if memory is None else self._item(memory, op.namespace)

    def _put(self, op: PutOp) -> None:
        if op.ttl is not None:
            raise NotImplementedError("MemosStore does not support TTLs; memos lifecycle policies archive and forget")
        cube = self.namespaces.cube(op.namespace)
        try:
            memory = self._find(cube, op.key)
        except PermissionDenied as exc:  # the lookup reads, but what the caller lacks for a put is write
            raise PermissionDenied(
                f"{self.client.principal} lacks the 'write' right on cube {cube!r} (a put writes)", cube=cube,
                right="write",
            ) from exc
        if op.value is None:
            if memory is not None:
                self.client.delete(memory.id)
                with self._lock:
                    self._ids.pop((cube, op.key), None)
            return
        try:
            content = json.dumps(dict(op.value), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the value of {op.namespace}/{op.key} must be JSON: {exc}") from exc
        thread = thread_of()
        metadata: dict[str, Any] = {STORE_KEY: op.key, **({"thread": thread} if thread else {})}
        refs = [message_ref(thread, None)] if thread else []
        if memory is not None:
            kept = {k: v for k, v in memory.metadata.items() if k != "thread"}  # the thread is this version's
            self.client.update(memory.id, content=content, metadata={**kept, **metadata}, source_refs=refs)
            return
        self.client.create_cube(cube, "LangGraph store namespace", exist_ok=True)
        written = self.client.write(cube, content, metadata=metadata, source_refs=refs)
        with self._lock:
            self._ids[(cube, op.key)] = written.id

    # ---------------------------------------------------------------------------------------------- search

    def _cubes(self) -> list[tuple[tuple[str, ...], CubeInfo]]:
        """Readable cubes that stand for a namespace, sorted by namespace."""
        out = []
        for info in self.client.cubes():
            namespace = self.namespaces.namespace(info.name)
            if namespace is not None:
                out.append((namespace, info))
        return sorted(out, key=lambda pair: pair[0])

    def _search(self, op: SearchOp) -> list[SearchItem]:
        n = len(op.namespace_prefix)
        scope = {info.name: ns for ns, info in self._cubes() if ns[:n] == op.namespace_prefix}
        if not scope:
            return []
        if op.query:
            items = self._ranked(op, scope)
        else:
            items = (self._item(m, ns) for cube, ns in scope.items() for m in self._scan(cube))
        matching = (i for i in items if _matches(i.value, op.filter))
        out = []
        for position, item in enumerate(matching):
            if position >= op.offset + op.limit:
                break
            if position >= op.offset:
                out.append(item)
        return out

    def _ranked(self, op: SearchOp, scope: Mapping[str, tuple[str, ...]]) -> list[SearchItem]:
        """Hybrid search over the cubes in scope (64 per syscall), merged by fused score, best first."""
        k = MAX_K if op.filter else min(MAX_K, op.offset + op.limit)
        cubes = list(scope)
        hits = []
        for start in range(0, len(cubes), 64):
            hits.extend(self.client.search(op.query, cubes[start:start + 64], k=k))
        hits.sort(key=lambda h: -h.score)
        return [self._item(h.memory, scope[h.memory.cube], h.score) for h in hits[:k]]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        found = [
            ns for ns, info in self._cubes()
            if info.memories.get(State.ACTIVE.value, 0) > 0
            and all(_namespace_matches(c, ns) for c in op.match_conditions or ())
        ]
        if op.max_depth is not None:
            found = sorted({ns[: op.max_depth] for ns in found})
        return found[op.offset: op.offset + op.limit]


def _stored_value(memory: Memory) -> dict[str, Any] | None:
    """The value a put stored, or None if the content is no longer a JSON object (changed outside the store)."""
    try:
        value = json.loads(memory.content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    part = namespace[: len(path)] if condition.match_type == "prefix" else namespace[len(namespace) - len(path):]
    return all(p in ("*", label) for p, label in zip(path, part, strict=True))


_OPERATORS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a is not None and float(a) > float(b),
    "$gte": lambda a, b: a is not None and float(a) >= float(b),
    "$lt": lambda a, b: a is not None and float(a) < float(b),
    "$lte": lambda a, b: a is not None and float(a) <= float(b),
}


def _matches(value: Any, condition: Any) -> bool:
    """Whether ``value`` satisfies a LangGraph filter (exact values, nested objects, comparison operators).

    Raises:
        ValueError: an unknown ``$`` operator.
    """
    if condition is None:
        return True
    if isinstance(condition, dict):
        if any(k.startswith("$") for k in condition):
            unknown = [k for k in condition if k not in _OPERATORS]
            if unknown:
                raise ValueError(f"unsupported filter operator(s) {unknown}; use {sorted(_OPERATORS)}")
            return all(_OPERATORS[k](value, v) for k, v in condition.items())
        return isinstance(value, dict) and all(_matches(value.get(k), v) for k, v in condition.items())
    if isinstance(condition, list | tuple):
        return (isinstance(value, list | tuple) and len(value) == len(condition)
                and all(_matches(a, b) for a, b in zip(value, condition, strict=True)))
    return value == condition
