"""Flapping guards: a plain promote/demote pair moves a memory back and forth with no traffic (and `policy check`
warns about it); `resident_for` stops it; a migration is not a use, so it does not restart `idle_for`."""

from __future__ import annotations

import io

import pytest
from fakes import FakeModelPort

from memos.schedulers.commands import main_check
from memos.schedulers.loader import load_policy
from memos.schedulers.runner import PolicyRunner
from memos.types import Kind

MINUTE = 60.0
PAIR = """name: pair
applies_to: {cubes: ["team/*"]}
schedule: {every: 1m}
rules:
  - name: promote-hot
    when: {kind: plaintext, reads: {within: 1h, at_least: 5}}
    then: {migrate: activation}
  - name: demote-idle
    when: {kind: activation, idle_for: 3m%s}
    then: {migrate: plaintext}
"""


@pytest.fixture
def model_port():
    return FakeModelPort()


def migrations_in_half_an_hour(tmp_path, mem, kernel, clock, policy_text):
    path = tmp_path / "pair.yaml"
    path.write_text(policy_text)
    runner = PolicyRunner(kernel.execute, [load_policy(path)], clock=clock.now)
    mem.create_cube("team/x", exist_ok=True)
    hot = mem.write("team/x", "the deploy key rotates every friday")
    for _ in range(5):
        mem.read(hot.id)
    moves = []
    for _ in range(30):  # evaluated every minute, no traffic at all
        clock.advance(MINUTE)
        moves += [o.rule for o in runner.run_once("pair").outcomes if o.outcome == "ok"]
    return hot, moves


def test_a_plain_promote_demote_pair_flaps_and_check_warns(tmp_path, mem, kernel, clock):
    _, moves = migrations_in_half_an_hour(tmp_path, mem, kernel, clock, PAIR % "")
    assert moves.count("pair/promote-hot") >= 5 and moves.count("pair/demote-idle") >= 5
    err = io.StringIO()
    assert main_check([str(tmp_path / "pair.yaml")], out=io.StringIO(), err=err) == 0
    assert "can flap" in err.getvalue() and "set resident_for: 1h on 'demote-idle'" in err.getvalue()


def test_resident_for_keeps_a_promoted_memory_until_its_reads_age_out(tmp_path, mem, kernel, clock):
    hot, moves = migrations_in_half_an_hour(tmp_path, mem, kernel, clock, PAIR % ", resident_for: 1h")
    assert moves == ["pair/promote-hot"]
    err = io.StringIO()
    assert main_check([str(tmp_path / "pair.yaml")], out=io.StringIO(), err=err) == 0 and err.getvalue() == ""
    runner = PolicyRunner(kernel.execute, [load_policy(tmp_path / "pair.yaml")], clock=clock.now)
    clock.advance(31 * MINUTE)  # resident for an hour now, and the reads are older than the window
    assert [o.rule for o in runner.run_once("pair").outcomes] == ["pair/demote-idle"]
    clock.advance(MINUTE)
    assert runner.run_once("pair").outcomes == ()
    assert [v.kind for v in mem.history(hot.id)] == [Kind.PLAINTEXT, Kind.ACTIVATION, Kind.PLAINTEXT]


def test_a_migration_does_not_restart_idle_for(tmp_path, mem, kernel, clock):
    path = tmp_path / "demote.yaml"
    path.write_text("name: demote\napplies_to: {cubes: ['team/*']}\nrules:\n  - name: cold\n"
                    "    when: {kind: activation, idle_for: 30m}\n    then: {migrate: plaintext}\n")
    runner = PolicyRunner(kernel.execute, [load_policy(path)], clock=clock.now)
    mem.create_cube("team/x")
    m = mem.write("team/x", "read once, then migrated by hand")
    mem.read(m.id)
    clock.advance(20 * MINUTE)
    mem.migrate(m.id, "activation")
    clock.advance(11 * MINUTE)  # 31 minutes after the read, 11 after the migration
    assert [o.rule for o in runner.run_once("demote").outcomes] == ["demote/cold"]


def test_percent_typos_and_python_values_are_caught_in_one_pass(tmp_path):
    path = tmp_path / "typos.yaml"
    path.write_text("name: typos\napplies_to: {cubes: ['team/*']}\nbudgets: {activation_bytes: 1GiB}\nrules:\n"
                    "  - name: a\n    when: {kind: activation, budget_pressure: {budget: activation_bytes, above: 90}}\n"
                    "    then: {migrate: plaintext}\n"
                    "  - name: b\n    when: {kind: plaintext, retention: {below: 10}}\n    then: {archive: false}\n")
    err = io.StringIO()
    assert main_check([str(path)], out=io.StringIO(), err=err) == 1
    lines = err.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "did you mean 0.9?" in lines[0] and "did you mean 0.1?" in lines[1]
    assert lines[2].endswith("expected true (or leave the key out), got false")
    assert not any(word in err.getvalue() for word in ("True", "False", "None"))


def test_check_reports_shape_errors_and_the_parsed_rules_cross_rule_problems_in_one_pass(tmp_path):
    """A file with a shape error elsewhere (a bad schedule, a broken third rule) still gets the flap warning of its
    valid promote/demote pair, the duplicate rule name and the dead rule among the rules that parsed: all located."""
    text = """name: pair
applies_to: {cubes: ["team/*"]}
schedule: {every: soon}
budgets: {activation_bytes: 1MiB}
rules:
  - name: promote-hot
    when: {kind: plaintext, reads: {within: 1h, at_least: 5}}
    then: {migrate: activation}
  - name: demote-idle
    when: {kind: activation, idle_for: 3m}
    then: {migrate: plaintext}
  - name: broken
    when: {kind: plaintext, reads: {within: 1 hour}}
    then: archive
  - name: promote-hot
    when: {kind: activation}
    then: {migrate: activation}
  - name: squeeze
    when: {kind: activation, budget_pressure: {budget: plaintext_count, above: 0.9}}
    then: {migrate: plaintext}
"""
    path = tmp_path / "pair.yaml"
    path.write_text(text)
    err = io.StringIO()
    assert main_check([str(path)], out=io.StringIO(), err=err) == 1
    lines = err.getvalue().splitlines()
    f = str(path)
    assert any(line.startswith(f"{f}:3 schedule.every:") for line in lines), lines
    assert any(line.startswith(f"{f}:13 rules[2].when.reads.within:") for line in lines), lines
    assert f"{f}:15 rules[3].name: duplicate rule name 'promote-hot' (also rules[0])" in lines
    assert any(line.startswith(f"{f}:16 rules[3].when.kind:") and "never matches" in line for line in lines), lines
    assert any(line.startswith(f"{f}:19 rules[4].when.budget_pressure.budget:") for line in lines), lines
    assert any(line.startswith(f"warning: {f}:10 rules[1].when:") and "can flap" in line for line in lines), lines
    assert all("True" not in line and "None" not in line for line in lines)
