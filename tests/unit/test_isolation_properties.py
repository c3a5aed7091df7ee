"""Isolation: no syscall ever reveals a memory to a principal who may not read it at that moment.

A hypothesis state machine plays four principals who create and drop cubes, grant and revoke rights (also to
``*``), write (also derived from memories of other cubes), update, delete, fuse, link and purge. A model of the
grants says what each principal may read now. After every step one principal looks through every read path (read,
list, search, assemble_context, history, events, stats, cube_info, list_cubes, audit) and probes memories it may
not read, and these must hold:

- **content**: no version of a memory it may not read, and no version of a purged memory, appears anywhere in any
  answer or error (each version carries a unique marker word);
- **identity**: no memory it may not read is the subject of anything returned (a memory, a search hit, a context
  item, an event, an audit record), and no error names one that the call did not name itself;
- **concealment**: every call on such a memory fails exactly as the same call on a memory that never existed;
- **counts**: stats and the cube listing cover exactly the cubes it may read;
- **authority**: every change the kernel accepted was allowed by the grants at that moment.

Provenance references are ids chosen by a principal who could read them at the time: ``derived_from``, a fuse's
sources (in the fused memory, its event and its audit detail), a retired source's ``source_refs``, link targets and
a stale event's source. They carry ids, never content, and are not counted as revealing (docs/reliability.md).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes import HashingEmbedder
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from memos.clock import ManualClock
from memos.errors import MemosError
from memos.kernel import Kernel
from memos.service import KernelService
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.types import EVERYONE, Right

PRINCIPALS = ("agent:ann", "agent:bob", "agent:cy", "user:dee")
CUBES = ("team/a", "team/b", "agent/ann/private", "shared")
RIGHTS = ("read", "write", "admin")
NEVER_WRITTEN, ALSO_NEVER_WRITTEN = "m_" + "e" * 20, "m_" + "d" * 20
_MARKER = re.compile(r"mk\d{5}z")
_ID = re.compile(r"m_[0-9a-f]{16,32}")


@dataclass
class CubeModel:
    owner: str
    grants: dict[str, str] = field(default_factory=dict)


@dataclass
class MemoryModel:
    cube: str
    markers: list[str]
    state: str = "active"
    purged: bool = False

    @property
    def versions(self) -> int:
        return len(self.markers)


class Isolation(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.home = Path(tempfile.mkdtemp(prefix="memos-isolation-"))
        self.clock = ManualClock()
        ids = (f"m_{i:020x}" for i in itertools.count())  # deterministic: hypothesis replays a run exactly
        kernel = Kernel(SqliteStore(self.home / "memos.sqlite3", synchronous="OFF"), InMemoryVectorIndex(),
                        HashingEmbedder(), clock=self.clock, new_id=lambda: next(ids))
        self.service = KernelService(kernel)
        self.cubes: dict[str, CubeModel] = {}
        self.memories: dict[str, MemoryModel] = {}
        self.markers = (f"mk{i:05d}z" for i in itertools.count())

    def teardown(self) -> None:
        self.service.close()
        shutil.rmtree(self.home, ignore_errors=True)

    # ----------------------------------------------------------------------------------------- the model

    def right(self, principal: str, cube: str) -> int:
        model = self.cubes.get(cube)
        if model is None:
            return 0
        held = [model.grants.get(principal), model.grants.get(EVERYONE), "admin" if principal == model.owner else None]
        return max((Right(r).level for r in held if r), default=0)

    def readable(self, principal: str) -> set[str]:
        return {c for c in self.cubes if self.right(principal, c) >= 1}

    def hidden(self, principal: str) -> tuple[set[str], set[str]]:
        """(ids, markers) that ``principal`` may not see now: memories of cubes it cannot read, and every version
        of every purged memory (whose ids stay in the audit and event logs by design)."""
        readable = self.readable(principal)
        ids, markers = set(), set()
        for memory_id, m in self.memories.items():
            if m.purged:
                markers.update(m.markers)
            elif m.cube not in readable:
                ids.add(memory_id)
                markers.update(m.markers)
        return ids, markers

    def actor(self, data: st.DataObject, cube: str | None, needed: int) -> str:
        """Mostly a principal that holds ``needed`` on ``cube`` (so that changes happen), sometimes anyone."""
        able = [p for p in PRINCIPALS if cube is not None and self.right(p, cube) >= needed]
        return data.draw(st.sampled_from(able if able and data.draw(st.integers(0, 3)) else PRINCIPALS))

    def onlooker(self, data: st.DataObject) -> str:
        """Mostly a principal from whom something is hidden (that is what there is to check), sometimes anyone."""
        blind = [p for p in PRINCIPALS if self.hidden(p)[1]]
        return data.draw(st.sampled_from(blind if blind and data.draw(st.integers(0, 3)) else PRINCIPALS))

    def existing(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.cubes) or CUBES))

    def live(self, data: st.DataObject) -> str | None:
        ids = sorted(i for i, m in self.memories.items() if not m.purged)
        return data.draw(st.sampled_from(ids)) if ids else None

    def call(self, principal: str, syscall: dict[str, Any]) -> dict[str, Any]:
        self.clock.advance(1)
        answer = self.service.call(principal, syscall)
        self.check_answer(principal, syscall, answer)
        return answer

    def new_content(self) -> tuple[str, str]:
        marker = next(self.markers)
        return marker, f"secret note {marker} about the harbour"

    # ----------------------------------------------------------------------------------------- the checks

    def check_answer(self, principal: str, syscall: dict[str, Any], answer: dict[str, Any]) -> None:
        ids, markers = self.hidden(principal)
        shown = answer
        if isinstance(answer.get("ok"), dict) and "query" in answer["ok"]:  # a context plan echoes the caller's query
            shown = {"ok": {k: v for k, v in answer["ok"].items() if k != "query"}}
        text = json.dumps(shown, ensure_ascii=False)
        leaked = set(_MARKER.findall(text)) & markers
        assert not leaked, f"{principal} saw the content of {leaked} in the answer to {syscall}"
        if "error" in answer:
            named = set(_ID.findall(json.dumps(syscall)))
            named_hidden = set(_ID.findall(text)) & ids - named
            assert not named_hidden, f"an error told {principal} about {named_hidden}: {answer['error']}"
            return
        subjects = set(subject_ids(answer["ok"]))
        assert not subjects & ids, f"{principal} was shown {subjects & ids} by {syscall}"

    def assert_authorised(self, principal: str, cube: str, needed: int, what: str) -> None:
        assert self.right(principal, cube) >= needed, f"{principal} was allowed to {what} in {cube} without the right"

    # ----------------------------------------------------------------------------------------- cubes and grants

    @initialize(owners=st.lists(st.sampled_from(PRINCIPALS), min_size=len(CUBES), max_size=len(CUBES)))
    def every_cube_has_an_owner(self, owners: list[str]) -> None:
        for name, owner in zip(CUBES, owners, strict=True):
            self.create_cube(owner, name)

    @rule(principal=st.sampled_from(PRINCIPALS), name=st.sampled_from(CUBES))
    def create_cube(self, principal: str, name: str) -> None:
        answer = self.call(principal, {"op": "create_cube", "name": name})
        assert ("ok" in answer) == (name not in self.cubes)
        if "ok" in answer:
            self.cubes[name] = CubeModel(owner=principal)

    @rule(principal=st.sampled_from(PRINCIPALS), name=st.sampled_from(CUBES), data=st.data())
    def drop_cube(self, principal: str, name: str, data: st.DataObject) -> None:
        if data.draw(st.integers(0, 3)):  # rarely: dropping a cube purges everything in it
            return
        answer = self.call(principal, {"op": "drop_cube", "name": name})
        if "ok" in answer:
            self.assert_authorised(principal, name, 3, "drop the cube")
            for m in self.memories.values():
                if m.cube == name:
                    m.purged = True
            del self.cubes[name]

    @rule(to=st.sampled_from((*PRINCIPALS, EVERYONE)), right=st.sampled_from(RIGHTS), data=st.data())
    def grant(self, to: str, right: str, data: st.DataObject) -> None:
        cube = self.existing(data)
        principal = self.actor(data, cube, 3)
        answer = self.call(principal, {"op": "grant", "cube": cube, "principal": to, "right": right})
        if "ok" in answer:
            self.assert_authorised(principal, cube, 3, "grant")
            self.cubes[cube].grants[to] = right

    @rule(to=st.sampled_from((*PRINCIPALS, EVERYONE)), data=st.data())
    def revoke(self, to: str, data: st.DataObject) -> None:
        cube = self.existing(data)
        principal = self.actor(data, cube, 3)
        answer = self.call(principal, {"op": "revoke", "cube": cube, "principal": to})
        if "ok" in answer:
            self.assert_authorised(principal, cube, 3, "revoke")
            self.cubes[cube].grants.pop(to, None)

    # ----------------------------------------------------------------------------------------- memories

    @rule(count=st.integers(1, 3), data=st.data())
    def write(self, count: int, data: st.DataObject) -> None:
        for _ in range(count):
            self.write_one(data)

    def write_one(self, data: st.DataObject) -> None:
        cube = self.existing(data)
        principal = self.actor(data, cube, 2)
        source = data.draw(st.sampled_from(("conversation", "tool")))
        derived = data.draw(st.booleans())
        marker, content = self.new_content()
        syscall: dict[str, Any] = {"op": "write", "cube": cube, "content": content, "source": source}
        parent = self.live(data) if derived else None
        if parent is not None:
            syscall["derived_from"] = [{"id": parent, "version": self.memories[parent].versions}]
        answer = self.call(principal, syscall)
        if "ok" in answer:
            self.assert_authorised(principal, cube, 2, "write")
            if parent is not None:
                self.assert_authorised(principal, self.memories[parent].cube, 1, "derive from a memory")
            self.memories[answer["ok"]["id"]] = MemoryModel(cube=cube, markers=[marker])

    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        memory_id = self.live(data)
        if memory_id is None:
            return
        principal = self.actor(data, self.memories[memory_id].cube, 2)
        marker, content = self.new_content()
        answer = self.call(principal, {"op": "update", "id": memory_id, "content": content})
        if "ok" in answer:
            m = self.memories[memory_id]
            self.assert_authorised(principal, m.cube, 2, "update")
            m.markers.append(marker)

    @rule(op=st.sampled_from(("delete", "archive", "restore")), data=st.data())
    def transition(self, op: str, data: st.DataObject) -> None:
        memory_id = self.live(data)
        if memory_id is None:
            return
        principal = self.actor(data, self.memories[memory_id].cube, 2)
        answer = self.call(principal, {"op": op, "id": memory_id})
        if "ok" in answer:
            m = self.memories[memory_id]
            self.assert_authorised(principal, m.cube, 2, op)
            m.markers.append(m.markers[-1])  # a new version with the same content
            m.state = answer["ok"]["state"]

    @rule(data=st.data())
    def purge(self, data: st.DataObject) -> None:
        memory_id = self.live(data)
        if memory_id is None or data.draw(st.integers(0, 2)):  # less often than the other changes
            return
        principal = self.actor(data, self.memories[memory_id].cube, 2)
        answer = self.call(principal, {"op": "purge", "id": memory_id})
        if "ok" in answer:
            self.assert_authorised(principal, self.memories[memory_id].cube, 2, "purge")
            self.memories[memory_id].purged = True

    @rule(keep=st.booleans(), data=st.data())
    def fuse(self, keep: bool, data: st.DataObject) -> None:
        first, second = self.live(data), self.live(data)
        if first is None or first == second:
            return
        cube = self.existing(data)
        principal = self.actor(data, cube, 2)
        marker, content = self.new_content()
        answer = self.call(principal, {"op": "fuse", "ids": [first, second], "cube": cube, "content": content,
                                       "keep_sources": keep})
        if "ok" in answer:
            self.assert_authorised(principal, cube, 2, "fuse into")
            for source in (first, second):
                m = self.memories[source]
                self.assert_authorised(principal, m.cube, 1 if keep else 2, "fuse from")
                if not keep:
                    m.markers.append(m.markers[-1])
                    m.state = "archived"
            self.memories[answer["ok"]["id"]] = MemoryModel(cube=cube, markers=[marker])

    @rule(data=st.data())
    def link(self, data: st.DataObject) -> None:
        source, target = self.live(data), self.live(data)
        if source is None or target is None:
            return
        principal = self.actor(data, self.memories[source].cube, 2)
        answer = self.call(principal, {"op": "link", "source": source, "target": target})
        if "ok" in answer:
            self.assert_authorised(principal, self.memories[source].cube, 2, "link from")
            self.assert_authorised(principal, self.memories[target].cube, 1, "link to")

    # ----------------------------------------------------------------------------------------- looking

    @rule(data=st.data())
    def look_everywhere(self, data: st.DataObject) -> None:
        principal = self.onlooker(data)
        readable = sorted(self.readable(principal))
        stats = self.call(principal, {"op": "stats"})["ok"]
        assert stats["cubes"] == len(readable)
        current = [m for m in self.memories.values() if not m.purged and m.cube in readable]
        assert sum(n for states in stats["memories"].values() for n in states.values()) == len(current)
        assert stats["versions"] == sum(m.versions for m in current)
        assert {c["name"] for c in self.call(principal, {"op": "list_cubes"})["ok"]["cubes"]} == set(readable)
        self.call(principal, {"op": "events", "limit": 1000})
        for cube in CUBES:
            self.call(principal, {"op": "cube_info", "name": cube})
            self.call(principal, {"op": "list", "cube": cube, "states": ["active", "archived", "deleted"], "limit": 1000})
            self.call(principal, {"op": "audit", "cube": cube, "limit": 1000})
            self.call(principal, {"op": "events", "cubes": [cube], "limit": 1000})
        for memory_id in self.memories:
            self.call(principal, {"op": "read", "id": memory_id})
            self.call(principal, {"op": "history", "id": memory_id})
        probe = data.draw(st.sampled_from([m for mem in self.memories.values() for m in mem.markers] or ["harbour"]))
        queries = [f"secret note {probe}", "harbour"]
        for query, cubes in itertools.product(queries, [readable, list(CUBES)]):
            if cubes:
                self.call(principal, {"op": "search", "query": query, "cubes": cubes, "k": 200})
                self.call(principal, {"op": "assemble_context", "query": query, "cubes": cubes, "k": 64,
                                      "token_budget": 10_000})

    @rule(version=st.sampled_from((1, 99)), data=st.data())
    def probe_a_hidden_memory(self, version: int, data: st.DataObject) -> None:
        principal = self.onlooker(data)
        hidden = sorted(self.hidden(principal)[0] | {i for i, m in self.memories.items() if m.purged})
        if not hidden:
            return
        memory_id = data.draw(st.sampled_from(hidden))
        own = sorted(c for c in self.cubes if self.right(principal, c) >= 2)
        cube = own[0] if own else CUBES[0]
        readable = sorted(i for i, m in self.memories.items() if not m.purged and self.right(principal, m.cube) >= 1)
        other = readable[0] if readable else ALSO_NEVER_WRITTEN
        probes = [
            {"op": "read", "id": memory_id}, {"op": "read", "id": memory_id, "version": version},
            {"op": "history", "id": memory_id}, {"op": "update", "id": memory_id, "content": "overwrite"},
            {"op": "delete", "id": memory_id}, {"op": "purge", "id": memory_id}, {"op": "pin", "id": memory_id},
            {"op": "rollback", "id": memory_id, "to_version": 1}, {"op": "link", "source": other, "target": memory_id},
            {"op": "link", "source": memory_id, "target": other},
            {"op": "write", "cube": cube, "content": "derived", "derived_from": [{"id": memory_id, "version": version}]},
            {"op": "fuse", "ids": [other, memory_id], "cube": cube, "content": "fused", "keep_sources": True},
            {"op": "migrate", "ids": [memory_id], "to": "plaintext"},
        ]
        for probe in probes:
            seen = self.call(principal, probe)
            assert "error" in seen, f"{principal} could {probe['op']} {memory_id}"
            unknown = json.loads(json.dumps(probe).replace(memory_id, NEVER_WRITTEN))
            baseline = self.call(principal, unknown)
            assert json.dumps(seen).replace(memory_id, NEVER_WRITTEN) == json.dumps(baseline), (
                f"{probe['op']} on a hidden memory differs from one on a memory that never existed: {seen} {baseline}"
            )

    @invariant()
    def the_model_and_the_kernel_agree_on_what_exists(self) -> None:
        listed = self.service.call("system", {"op": "stats"})["ok"]
        live = [m for m in self.memories.values() if not m.purged]
        assert sum(n for states in listed["memories"].values() for n in states.values()) == len(live)


def subject_ids(result: Any) -> list[str]:
    """Ids a result is *about*: memories, hits, context items, events, audit records (not provenance references)."""
    out: list[str] = []
    if isinstance(result, dict):
        if "content_hash" in result and "id" in result:  # a Memory
            out.append(result["id"])
        if isinstance(result.get("memory_id"), str):  # an event, an audit record, a context item
            out.append(result["memory_id"])
        for key, value in result.items():
            if key not in ("provenance", "data", "detail"):
                out.extend(subject_ids(value))
    elif isinstance(result, list):
        for item in result:
            out.extend(subject_ids(item))
    return out


Isolation.TestCase.settings = settings(
    max_examples=40, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestIsolation = Isolation.TestCase


@pytest.mark.parametrize("failing", ["fuse-of-a-deleted-source", "derived-from-a-missing-version"])
def test_a_failed_call_naming_a_memory_is_audited_in_that_memorys_cube(mem, failing: str) -> None:
    ann, bob = mem.as_principal("agent:ann"), mem.as_principal("agent:bob")
    ann.create_cube("team/a")
    bob.create_cube("team/b")
    bob.grant("team/b", "agent:ann", "write")
    first, second = ann.write("team/a", "the first plan"), ann.write("team/a", "the second plan")
    ann.delete(first.id)
    with pytest.raises(MemosError):
        if failing == "fuse-of-a-deleted-source":
            ann.fuse([first.id, second.id], "team/b", "both plans", keep_sources=True)
        else:
            ann.write("team/b", "a summary", derived_from=[(second.id, 7)])
    shown_to_bob = json.dumps([r.model_dump(mode="json") for r in bob.audit("team/b")])
    assert first.id not in shown_to_bob and second.id not in shown_to_bob
    assert [r.outcome for r in ann.audit("team/a")][-1] in ("invalid_state", "not_found")
