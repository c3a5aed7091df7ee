"""The policy scheduler end to end on the kernel, with a manual clock: promotion, demotion, decay, pins, and the
rule in the provenance of what it did."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeModelPort

from memos.schedulers.loader import load_policy
from memos.schedulers.runner import PolicyRunner
from memos.types import Kind, State

POLICIES = Path(__file__).resolve().parents[2] / "policies"
HOUR, DAY = 3600.0, 86400.0


@pytest.fixture
def model_port():
    return FakeModelPort()


@pytest.fixture
def runner(kernel, clock):
    return PolicyRunner(kernel.execute, [load_policy(POLICIES / "default.yaml")], clock=clock.now)


def test_read_five_times_in_an_hour_is_promoted_then_demoted_when_idle(mem, runner, clock):
    mem.create_cube("team/x")
    hot = mem.write("team/x", "the deploy key rotates every friday")
    cold = mem.write("team/x", "the office plant needs water")
    for _ in range(5):
        clock.advance(60)
        mem.read(hot.id)
    report = runner.run_once("default")
    assert [(o.rule, o.outcome, o.memories) for o in report.outcomes] == [("default/promote-hot", "ok", (hot.id,))]
    promoted = mem.read(hot.id)
    assert promoted.kind == Kind.ACTIVATION and mem.read(cold.id).kind == Kind.PLAINTEXT
    assert promoted.provenance.policy_rule == "default/promote-hot" and promoted.provenance.author == "system"
    migrated = [e for e in mem.events().events if e.type == "migrated"]
    assert migrated[-1].data["rule"] == "default/promote-hot"

    clock.advance(2 * HOUR)  # unused for longer than idle_for: 1h
    report = runner.run_once("default")
    assert ("default/demote-idle-activation", "ok") in [(o.rule, o.outcome) for o in report.outcomes]
    demoted = mem.read(hot.id)
    assert demoted.kind == Kind.PLAINTEXT and demoted.payload is None
    assert [v.kind for v in mem.history(hot.id)] == [Kind.PLAINTEXT, Kind.ACTIVATION, Kind.PLAINTEXT]


def test_decayed_memories_are_archived_and_pinned_ones_never(mem, runner, clock):
    mem.create_cube("team/x")
    forgotten = mem.write("team/x", "a trivia fact nobody reads")
    pinned = mem.write("team/x", "the incident runbook")
    mem.pin(pinned.id)
    clock.advance(120 * DAY)
    report = runner.run_once("default")
    assert {(o.rule, o.memories) for o in report.outcomes} == {("default/archive-forgotten", (forgotten.id,))}
    assert mem.read(forgotten.id).state == State.ARCHIVED
    assert mem.read(pinned.id).state == State.ACTIVE
    clock.advance(365 * DAY)
    runner.run_once("default")
    assert mem.read(pinned.id).state == State.ACTIVE


def test_a_memory_edited_after_the_snapshot_is_not_acted_on(mem, kernel, clock):
    mem.create_cube("team/x")
    m = mem.write("team/x", "old fact")
    clock.advance(120 * DAY)

    class EditingBetween:
        """Executes like the kernel, but a user edits the memory right after the snapshot."""

        def __init__(self):
            self.edited = False

        def __call__(self, principal, call):
            result = kernel.execute(principal, call)
            if call.op == "snapshot" and not self.edited:
                self.edited = True
                mem.update(m.id, content="fresh fact")
            return result

    report = PolicyRunner(EditingBetween(), [load_policy(POLICIES / "default.yaml")], clock=clock.now).run_once("default")
    assert [o.outcome for o in report.outcomes] == ["conflict"]
    assert mem.read(m.id).state == State.ACTIVE


def test_only_the_scheduler_may_attribute_a_change_to_a_rule(mem):
    mem.create_cube("team/x")
    m = mem.write("team/x", "x")
    from memos.errors import PermissionDenied
    from memos.syscalls import Archive

    with pytest.raises(PermissionDenied, match="policy"):
        mem.execute(Archive(id=m.id, policy_rule="default/archive-forgotten"))
