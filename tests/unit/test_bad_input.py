"""Bad input gets a typed error with a clear message, and the kernel keeps serving."""

from __future__ import annotations

import pytest

from memos import syscalls as sc
from memos.errors import AlreadyExists, InvalidSyscall, NotFound, PayloadTooLarge, VersionConflict


def test_empty_and_oversize_content(mem):
    mem.create_cube("team/x")
    with pytest.raises(InvalidSyscall, match="empty"):
        mem.write("team/x", "   ")
    with pytest.raises(PayloadTooLarge) as err:
        mem.write("team/x", "x" * (sc.MAX_CONTENT_BYTES + 1))
    assert err.value.details["limit"] == sc.MAX_CONTENT_BYTES
    with pytest.raises(InvalidSyscall, match="unicode"):
        mem.write("team/x", "bad \ud800 surrogate")
    assert mem.write("team/x", "still serving").version == 1


def test_unknown_cube_unknown_memory(mem):
    with pytest.raises(NotFound, match="no/such"):
        mem.write("no/such", "x")
    with pytest.raises(NotFound):
        mem.read("m_" + "0" * 20)


def test_unknown_fields_and_wrong_types_on_the_wire(kernel):
    with pytest.raises(InvalidSyscall, match="surprise"):
        kernel.execute("agent:a", {"op": "create_cube", "name": "team/x", "surprise": 1})
    with pytest.raises(InvalidSyscall, match="k"):
        kernel.execute("agent:a", {"op": "search", "query": "q", "cubes": ["team/x"], "k": "many"})
    with pytest.raises(InvalidSyscall, match="unknown syscall op"):
        kernel.execute("agent:a", {"op": "format_disk"})
    with pytest.raises(InvalidSyscall, match="principal"):
        kernel.execute("../../etc", {"op": "list_cubes"})
    with pytest.raises(InvalidSyscall):
        kernel.execute("agent:a", ["not", "a", "dict"])


@pytest.mark.parametrize("name", ["../etc/passwd", "Team/X", "/abs", "a//b", "", "x" * 70, "a/b/", "a b"])
def test_path_like_or_malformed_cube_names_are_refused(mem, name):
    with pytest.raises(InvalidSyscall, match="cube name"):
        mem.create_cube(name)


def test_metadata_limits(mem):
    mem.create_cube("team/x")
    deep: dict = {}
    node = deep
    for _ in range(10):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidSyscall, match="deeper"):
        mem.write("team/x", "x", metadata=deep)
    with pytest.raises(PayloadTooLarge):
        mem.write("team/x", "x", metadata={"blob": "y" * (sc.MAX_METADATA_BYTES + 10)})
    with pytest.raises(InvalidSyscall, match="JSON"):
        mem.write("team/x", "x", metadata={"n": float("nan")})


def test_duplicate_cube(mem):
    mem.create_cube("team/x")
    with pytest.raises(AlreadyExists):
        mem.create_cube("team/x")
    assert mem.create_cube("team/x", exist_ok=True).name == "team/x"


def test_update_that_changes_nothing(mem):
    mem.create_cube("team/x")
    m = mem.write("team/x", "x")
    with pytest.raises(InvalidSyscall, match="nothing"):
        mem.update(m.id)


def test_failed_syscalls_are_audited_with_their_code(mem):
    mem.create_cube("team/x")
    m = mem.write("team/x", "x")
    mem.update(m.id, content="y")
    with pytest.raises(VersionConflict):
        mem.update(m.id, content="z", expected_version=1)
    assert mem.audit("team/x")[-1].outcome == "conflict"


def test_batch_returns_errors_in_place(kernel):
    kernel.execute("agent:a", {"op": "create_cube", "name": "team/x"})
    out = kernel.execute_batch("agent:a", [
        {"op": "write", "cube": "team/x", "content": "ok"},
        {"op": "write", "cube": "team/x", "content": ""},
    ])
    assert out[0].version == 1 and isinstance(out[1], InvalidSyscall)
