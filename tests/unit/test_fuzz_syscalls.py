"""Hostile syscalls get a typed ``MemosError``, the kernel keeps serving, and nothing already stored is lost.

Everything goes through ``KernelService.call``, the envelope every transport (in-process, Ray, HTTP) uses, so the
checks are the ones a remote caller sees: the answer is JSON, and an error rebuilds as its own typed class.
Hypothesis drives wire syscalls of random shape (malformed unicode, huge and deeply nested payloads, wrong types,
path-like cube names, bad principals); explicit cases pin each class of input. A corrupted database file at start
is a typed error that names the file.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fakes import HashingEmbedder
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from memos import syscalls as sc
from memos.clock import ManualClock
from memos.errors import CorruptPayload, InvalidSyscall, MemosError, PayloadTooLarge, error_from_wire
from memos.kernel import Kernel
from memos.service import KernelService
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.types import CUBE_NAME_RE, PRINCIPAL_RE

OWNER, FUZZ = "agent:owner", "agent:fuzz"
CANARY_CUBE, OWN_CUBE = "team/canary", "fuzz/own"
CANARY_IDS = tuple(f"m_{i:020x}" for i in range(3))  # ids are handed out in order: the owner's three memories,
OWN_IDS = tuple(f"m_{i:020x}" for i in range(3, 5))  # then the fuzzing principal's two
UNKNOWN_ID = "m_" + "f" * 20

#: Strings that have broken parsers, databases and terminals before.
NASTY = (
    "", " ", "\x00", "a\x00b", "\ud800", "\udfff", "x\ud83d", "\u202e", "\u200f", "\ufeff", "\U0010ffff", "e\u0301",
    "\u0000\u202e\ud800", "../../etc/passwd", "/abs", "team/../x", "team//x", "TEAM/X", "C:\\Windows", "%2e%2e/",
    "a" * 70, "'; DROP TABLE versions; --", '" OR 1=1 --', "*", "**", "\n", "\t", "NaN", "m_" + "0" * 20,
)
HUGE = ("x" * (sc.MAX_CONTENT_BYTES + 1), "é" * (sc.MAX_CONTENT_BYTES // 2 + 1), "q" * (sc.MAX_QUERY_CHARS + 1))
VALID = (
    CANARY_CUBE, OWN_CUBE, "no/such", *CANARY_IDS, *OWN_IDS, UNKNOWN_ID, "read", "write", "admin", "tool", "untrusted",
    "active", "deleted", "plaintext", "activation", "parametric", "hybrid", "2026-01-01T00:00:00Z", OWNER, FUZZ, "*",
)
BIG_INTS = (0, 1, -1, 2**31, 2**63 - 1, 2**63, 2**64, 2**70, -(2**63) - 1)


def nested(depth: int, leaf: Any = 1) -> Any:
    for i in range(depth):
        leaf = {"k": leaf} if i % 2 else [leaf]
    return leaf


texts = st.one_of(
    st.sampled_from(NASTY),
    st.sampled_from(VALID),
    st.text(st.characters(exclude_categories=()), max_size=24),  # every code point, lone surrogates included
    st.sampled_from(HUGE),
)
atoms = st.one_of(
    st.none(), st.booleans(), st.sampled_from(BIG_INTS), st.integers(), st.floats(), texts, st.binary(max_size=8),
    st.integers(0, 200).map(nested),  # deeper values are pinned below: hypothesis cannot print them
)
values = st.recursive(
    atoms, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(texts, kids, max_size=4), max_leaves=10
)
FIELDS = {op: sorted({f.alias or name for name, f in cls.model_fields.items()}) for op, cls in sc.SYSCALL_TYPES.items()}


@st.composite
def wire_syscalls(draw: st.DrawFn) -> Any:
    """Mostly a dict with a known ``op`` and random values for some of its fields; sometimes anything at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    op = draw(st.sampled_from(sorted(FIELDS)) | atoms)
    known = FIELDS.get(op, []) if isinstance(op, str) else []
    fields = {name: draw(values) for name in known if draw(st.booleans())}
    if draw(st.integers(0, 4)) == 0:
        fields[draw(texts)] = draw(values)
    return {"op": op, **fields}


principals = st.one_of(st.just(FUZZ), st.just(FUZZ), texts, atoms)


def answer_of(service: KernelService, principal: Any, syscall: Any) -> dict[str, Any]:
    """Call through the envelope; the answer must survive JSON, and an error must rebuild as its typed class."""
    answer = service.call(principal, syscall)
    wire = json.loads(json.dumps(answer))
    if "error" in wire:
        error = error_from_wire(wire["error"])
        assert type(error) is not MemosError, f"unknown error code {wire['error']['code']!r}"
        assert error.message
    return wire


class Stored:
    """A kernel with memories the fuzzing principal may read but not change, and a cube of its own."""

    def __init__(self, home: Path) -> None:
        ids = (f"m_{i:020x}" for i in itertools.count())
        self.kernel = Kernel(
            SqliteStore(home / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(), HashingEmbedder(),
            clock=ManualClock(), new_id=lambda: next(ids),
        )
        self.service = KernelService(self.kernel)
        owner = [
            {"op": "create_cube", "name": CANARY_CUBE},
            {"op": "write", "cube": CANARY_CUBE, "content": "canary one: the vault opens at nine"},
            {"op": "write", "cube": CANARY_CUBE, "content": "canary two", "metadata": {"a": [1, 2]}, "tags": ["t"]},
            {"op": "write", "cube": CANARY_CUBE, "content": "canary three", "source": "tool"},
            {"op": "update", "id": CANARY_IDS[1], "content": "canary two, revised", "expected_version": 1},
            {"op": "delete", "id": CANARY_IDS[2]},
            {"op": "grant", "cube": CANARY_CUBE, "principal": FUZZ, "right": "read"},
        ]
        for syscall in owner:
            assert "ok" in self.service.call(OWNER, syscall), syscall
        mine = [
            {"op": "create_cube", "name": OWN_CUBE},
            {"op": "write", "cube": OWN_CUBE, "content": "my first note"},
            {"op": "write", "cube": OWN_CUBE, "content": "my second note"},
        ]
        for syscall in mine:
            assert "ok" in self.service.call(FUZZ, syscall), syscall
        self.before = self.state()

    def state(self) -> list[tuple[Any, ...]]:
        """Every version of every canary memory (usage counters aside: reads are allowed to count)."""
        out = []
        for memory_id in CANARY_IDS:
            history = self.service.call("system", {"op": "history", "id": memory_id})["ok"]["memories"]
            out.extend((m["id"], m["version"], m["state"], m["content"], m["metadata"], m["tags"]) for m in history)
        return out

    def assert_intact_and_serving(self) -> None:
        assert self.state() == self.before
        written = answer_of(self.service, OWNER, {"op": "write", "cube": CANARY_CUBE, "content": "still serving"})
        assert written["ok"]["version"] == 1
        assert self.service.call(OWNER, {"op": "purge", "id": written["ok"]["id"]})["ok"]["ok"]


@pytest.fixture
def stored(tmp_path: Path) -> Stored:
    s = Stored(tmp_path)
    yield s
    s.kernel.close()


FUZZ_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ_SETTINGS
@given(principal=principals, syscall=wire_syscalls())
@example(principal=FUZZ, syscall={"op": "write", "cube": OWN_CUBE, "content": "x", "tags": ["\ud800"]})
@example(principal="\ud800", syscall={"op": "list_cubes"})
@example(principal=FUZZ, syscall={"op": "events", "since": 2**63})
@example(principal=FUZZ, syscall={"op": ["write"]})
def test_random_wire_syscalls_get_typed_errors_and_lose_nothing(stored: Stored, principal: Any, syscall: Any) -> None:
    answer_of(stored.service, principal, syscall)
    stored.assert_intact_and_serving()


@settings(FUZZ_SETTINGS, max_examples=150)
@given(content=st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200))
def test_any_encodable_text_round_trips_exactly_or_is_refused_as_blank(stored: Stored, content: str) -> None:
    """NULs, RTL overrides, BOMs, combining marks and astral characters are stored and read back byte for byte."""
    answer = answer_of(stored.service, FUZZ, {"op": "write", "cube": OWN_CUBE, "content": content})
    if not content.strip():
        assert answer["error"]["code"] == "invalid"
        return
    memory = answer["ok"]
    assert stored.service.call(FUZZ, {"op": "read", "id": memory["id"]})["ok"]["content"] == content
    found = answer_of(stored.service, FUZZ, {"op": "search", "query": content[:100], "cubes": [OWN_CUBE], "k": 5})
    assert "ok" in found


@pytest.mark.parametrize("text", ["a\x00b", "left \u202e right", "\ufeffbom", "e\u0301", "\U0010ffff", "zero\u200bwidth"])
@pytest.mark.parametrize("slot", ["content", "tag", "metadata_key", "metadata_value", "source_ref", "query"])
def test_unusual_but_valid_unicode_is_kept_exactly(stored: Stored, text: str, slot: str) -> None:
    write: dict[str, Any] = {"op": "write", "cube": OWN_CUBE, "content": "carrier"}
    if slot == "query":
        assert "ok" in answer_of(stored.service, FUZZ, {"op": "search", "query": text, "cubes": [OWN_CUBE]})
        return
    if slot == "content":
        write["content"] = text
    elif slot == "tag":
        write["tags"] = [text]
    elif slot == "metadata_key":
        write["metadata"] = {text: 1}
    elif slot == "metadata_value":
        write["metadata"] = {"k": text}
    else:
        write["source_refs"] = [text]
    answer = answer_of(stored.service, FUZZ, write)
    if slot == "tag" and "\x00" in text:
        assert answer["error"]["code"] == "invalid"  # tags refuse control characters
        return
    memory = stored.service.call(FUZZ, {"op": "read", "id": answer["ok"]["id"]})["ok"]
    kept = {"content": memory["content"], "tag": (memory["tags"] or [None])[0], "metadata_key": next(iter(memory["metadata"]), None),
            "metadata_value": memory["metadata"].get("k"), "source_ref": (memory["provenance"]["source_refs"] or [None])[0]}
    assert kept[slot] == text


LONE_SURROGATE_CASES = [
    pytest.param({"op": "write", "cube": OWN_CUBE, "content": "x", "tags": ["\ud800"]}, id="tag"),
    pytest.param({"op": "write", "cube": OWN_CUBE, "content": "bad \ud800"}, id="content"),
    pytest.param({"op": "write", "cube": OWN_CUBE, "content": "x", "metadata": {"\udfff": 1}}, id="metadata-key"),
    pytest.param({"op": "write", "cube": OWN_CUBE, "content": "x", "metadata": {"k": "\ud83d"}}, id="metadata-value"),
    pytest.param({"op": "write", "cube": OWN_CUBE, "content": "x", "source_refs": ["\ud800"]}, id="source-ref"),
    pytest.param({"op": "search", "query": "a\ud800", "cubes": [OWN_CUBE]}, id="query"),
    pytest.param({"op": "create_cube", "name": "team/y", "description": "\ud800"}, id="description"),
    pytest.param({"op": "\ud800"}, id="op"),
]


@pytest.mark.parametrize("syscall", LONE_SURROGATE_CASES)
def test_lone_surrogates_are_invalid_input(stored: Stored, syscall: dict[str, Any]) -> None:
    assert answer_of(stored.service, FUZZ, syscall)["error"]["code"] == "invalid"
    stored.assert_intact_and_serving()


@pytest.mark.parametrize("principal", [
    pytest.param("agent:\ud800", id="surrogate"),
    "", "../../etc", "agent a", "a" * 200, None, 42, b"agent:fuzz", ["agent:fuzz"], "agent:\x00",
])
def test_bad_principals_are_invalid_input(stored: Stored, principal: Any) -> None:
    assert answer_of(stored.service, principal, {"op": "list_cubes"})["error"]["code"] == "invalid"
    stored.assert_intact_and_serving()


INT_BEYOND_SQLITE = 2**63
@pytest.mark.parametrize("syscall", [
    pytest.param({"op": "events", "since": INT_BEYOND_SQLITE}, id="events.since"),
    pytest.param({"op": "audit", "cube": OWN_CUBE, "since": INT_BEYOND_SQLITE}, id="audit.since"),
    pytest.param({"op": "read", "id": CANARY_IDS[0], "version": INT_BEYOND_SQLITE}, id="read.version"),
    pytest.param({"op": "list", "cube": OWN_CUBE, "offset": INT_BEYOND_SQLITE}, id="list.offset"),
    pytest.param({"op": "write", "cube": OWN_CUBE, "content": "x",
                  "derived_from": [{"id": CANARY_IDS[0], "version": INT_BEYOND_SQLITE}]}, id="derived_from.version"),
    pytest.param({"op": "update", "id": CANARY_IDS[0], "content": "x", "expected_version": INT_BEYOND_SQLITE},
                 id="update.expected_version"),
    pytest.param({"op": "search", "query": "q", "cubes": [OWN_CUBE], "k": INT_BEYOND_SQLITE}, id="search.k"),
])
def test_integers_beyond_the_storage_range_are_refused(stored: Stored, syscall: dict[str, Any]) -> None:
    assert answer_of(stored.service, FUZZ, syscall)["error"]["code"] in ("invalid", "not_found", "denied")
    stored.assert_intact_and_serving()


@pytest.mark.parametrize("op", [["write"], {"op": "write"}])
def test_an_unhashable_op_is_invalid_input(stored: Stored, op: Any) -> None:
    assert answer_of(stored.service, FUZZ, {"op": op})["error"]["code"] == "invalid"


@pytest.mark.parametrize("depth", [
    7, 200,
    pytest.param(3000),
])
@pytest.mark.parametrize("op", ["write", "update", "fuse"])
def test_metadata_nested_too_deep_is_invalid_at_any_depth(stored: Stored, depth: int, op: str) -> None:
    syscall = {
        "write": {"op": "write", "cube": OWN_CUBE, "content": "x", "metadata": {"k": nested(depth)}},
        "update": {"op": "update", "id": OWN_IDS[0], "metadata": {"k": nested(depth)}},
        "fuse": {"op": "fuse", "ids": list(OWN_IDS), "cube": OWN_CUBE, "content": "x", "metadata": {"k": nested(depth)}},
    }[op]
    assert answer_of(stored.service, FUZZ, syscall)["error"]["code"] == "invalid"
    stored.assert_intact_and_serving()


def test_sizes_at_the_limits(stored: Stored) -> None:
    def write(**fields: Any) -> dict[str, Any]:
        return answer_of(stored.service, FUZZ, {"op": "write", "cube": OWN_CUBE, "content": "x", **fields})

    assert write(content="x" * sc.MAX_CONTENT_BYTES)["ok"]["size_bytes"] == sc.MAX_CONTENT_BYTES
    assert write(content="é" * (sc.MAX_CONTENT_BYTES // 2 + 1))["error"]["code"] == PayloadTooLarge.code  # bytes, not chars
    assert write(content="x" * 5_000_000)["error"]["code"] == PayloadTooLarge.code
    assert write(metadata={"blob": "y" * (sc.MAX_METADATA_BYTES + 1)})["error"]["code"] == PayloadTooLarge.code
    assert write(tags=[f"t{i}" for i in range(sc.MAX_TAGS + 1)])["error"]["code"] == "invalid"
    query = {"op": "search", "cubes": [OWN_CUBE], "query": "q" * (sc.MAX_QUERY_CHARS + 1)}
    assert answer_of(stored.service, FUZZ, query)["error"]["code"] == "invalid"
    batch = [{"op": "list_cubes"}] * (sc.MAX_BATCH + 1)
    with pytest.raises(InvalidSyscall):
        stored.kernel.execute_batch(FUZZ, batch)
    stored.assert_intact_and_serving()


@settings(FUZZ_SETTINGS, max_examples=200)
@given(name=st.one_of(texts, st.from_regex(CUBE_NAME_RE, fullmatch=True), st.lists(texts, max_size=9).map("/".join)))
@example(name="team/x\n")
def test_cube_names_are_either_well_formed_or_refused(stored: Stored, name: str) -> None:
    answer = answer_of(stored.service, FUZZ, {"op": "create_cube", "name": name, "exist_ok": True})
    if CUBE_NAME_RE.fullmatch(name):
        assert answer["ok"]["name"] == name
    else:
        assert answer["error"]["code"] == "invalid"
    assert {p.name for p in stored.kernel.store.path.parent.iterdir()} <= {
        "memos.sqlite3", "memos.sqlite3-wal", "memos.sqlite3-shm"
    }


@settings(FUZZ_SETTINGS, max_examples=200)
@given(principal=st.one_of(st.from_regex(PRINCIPAL_RE, fullmatch=True), st.text(st.characters(exclude_categories=("Cs",)))))
@example(principal="agent:alice\n")
def test_encodable_principals_are_either_well_formed_or_refused(stored: Stored, principal: str) -> None:
    answer = answer_of(stored.service, principal, {"op": "list_cubes"})
    assert ("ok" in answer) == bool(PRINCIPAL_RE.fullmatch(principal))


@pytest.mark.parametrize("syscall", [
    {"op": "create_cube", "name": "team/x\n"},
    {"op": "grant", "cube": OWN_CUBE, "principal": "agent:owner\n", "right": "admin"},
    {"op": "write", "cube": OWN_CUBE, "content": "x", "tags": ["urgent\n"]},
])
def test_a_trailing_newline_does_not_make_a_look_alike_name(stored: Stored, syscall: dict[str, Any]) -> None:
    assert answer_of(stored.service, FUZZ, syscall)["error"]["code"] == "invalid"


def damaged_database(tmp_path: Path, damage: str, memories: int = 1) -> Path:
    """A database with ``memories`` written and closed, then damaged on disk."""
    path = tmp_path / "memos.sqlite3"
    kernel = Kernel(SqliteStore(path, synchronous="OFF"), InMemoryVectorIndex(), HashingEmbedder())
    kernel.execute(OWNER, {"op": "create_cube", "name": "team/x"})
    for i in range(memories):
        kernel.execute(OWNER, {"op": "write", "cube": "team/x", "content": f"memory number {i} " * 20})
    kernel.close()
    data = bytearray(path.read_bytes())
    if damage == "garbage":
        data = bytearray(bytes(range(256)) * 64)
    elif damage == "truncated":
        data = data[: len(data) // 3]
    elif damage == "zeroed-header":
        data[:100] = bytes(100)
    else:  # "inside": a run of pages in the middle of the file is overwritten; the header is sound
        middle = len(data) // 2
        data[middle : middle + 8192] = b"Z" * 8192
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zeroed-header"])
def test_a_corrupted_database_file_at_start_is_a_typed_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = damaged_database(tmp_path, damage)
    with pytest.raises(CorruptPayload, match=re.escape(path.name)) as caught:  # named, never the absolute path
        Kernel(SqliteStore(path), InMemoryVectorIndex(), HashingEmbedder())
    assert str(tmp_path) not in str(caught.value)


def test_a_database_damaged_inside_is_a_typed_error_naming_the_file(tmp_path: Path) -> None:
    path = damaged_database(tmp_path, "inside", memories=300)
    with pytest.raises(MemosError, match=re.escape(path.name)) as caught:
        Kernel(SqliteStore(path), InMemoryVectorIndex(), HashingEmbedder())
    assert str(tmp_path) not in str(caught.value)


def test_garbage_in_the_write_ahead_log_is_ignored_and_committed_data_survives(tmp_path: Path) -> None:
    path = tmp_path / "memos.sqlite3"
    store = SqliteStore(path)
    with store.transaction():
        store.insert_cube("team/x", OWNER, "kept", 0.0)
    store.close()
    Path(f"{path}-wal").write_bytes(b"\xde\xad\xbe\xef" * 2048)
    reopened = SqliteStore(path)
    try:
        assert reopened.get_cube("team/x") == ("team/x", OWNER, "kept", 0.0)
        assert reopened.integrity_check() == "ok"
    finally:
        reopened.close()
