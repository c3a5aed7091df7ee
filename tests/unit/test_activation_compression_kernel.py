"""migrate(..., compression=...) through the kernel and from a policy rule (fake model host: no tensors here)."""

from __future__ import annotations

import pytest

from memos.errors import InvalidSyscall, PolicyError
from memos.schedulers import compile_policy, parse_spec
from memos.schedulers.actions import MigrateIntent
from memos.schedulers.runner import to_syscall
from memos.syscalls import Migrate
from memos.types import Kind, KVCompression
from tests.fakes import FakeModelPort


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


def test_migrate_passes_the_compression_to_the_model_host_and_reports_it(mem, model_port: FakeModelPort) -> None:
    mem.create_cube("team/x")
    m = mem.write("team/x", "the blue kettle is in the attic")
    (promoted,) = mem.migrate(m.id, "activation", compression="int8+snapkv@0.25")
    assert promoted.kind == Kind.ACTIVATION
    assert model_port.compressions == [KVCompression(quantize="int8", select="snapkv", keep=0.25).model_dump()]
    (event,) = [e for e in mem.events(types=["migrated"]).events if e.memory_id == m.id]
    assert event.data["compression"] == "int8+snapkv@0.25" and event.data["kept_tokens"] == event.data["tokens"] // 2


def test_migrate_without_compression_builds_the_full_cache(mem, model_port: FakeModelPort) -> None:
    mem.create_cube("team/x")
    m = mem.write("team/x", "the blue kettle is in the attic")
    mem.migrate(m.id, "activation")
    assert model_port.compressions == [None]


@pytest.mark.parametrize(("to", "compression"), [("activation", "zip@2"), ("plaintext", "int8")])
def test_a_bad_compression_is_refused(mem, to: str, compression: str) -> None:
    mem.create_cube("team/x")
    m = mem.write("team/x", "the blue kettle is in the attic")
    with pytest.raises(InvalidSyscall):
        mem.migrate(m.id, to, compression=compression)


POLICY = """
name: compressing
applies_to: {cubes: ["team/*"]}
rules:
  - name: promote-hot
    when: {kind: plaintext, reads: {within: 1h, at_least: 1}}
    then: {migrate: activation, compression: int8+sink_window@0.5}
"""


def test_a_policy_rule_chooses_the_compression() -> None:
    policy = compile_policy(parse_spec(POLICY, "compressing.yaml"))
    then = policy.spec.rules[0].then
    assert then.action == "migrate" and then.compression == KVCompression(quantize="int8", select="sink_window")
    intent = MigrateIntent("m_0123456789abcdef", "team/x", Kind.PLAINTEXT, Kind.ACTIVATION, 1, then.compression)

    class Planned:
        syscall = intent
        policy_rule = "compressing/promote-hot"

    call = to_syscall(Planned())
    assert isinstance(call, Migrate) and call.compression == then.compression


@pytest.mark.parametrize("then", ["{migrate: plaintext, compression: int8}", "{archive: true, compression: int8}",
                                  "{migrate: activation, compression: int3}"])
def test_a_policy_compression_outside_promotion_or_malformed_is_refused(then: str) -> None:
    with pytest.raises(PolicyError):
        parse_spec(POLICY.replace("{migrate: activation, compression: int8+sink_window@0.5}", then), "bad.yaml")
