"""`memos status` names a dead or restarting kernel actor and the command that fixes it (issue 13: it said only
"not answering")."""

from __future__ import annotations

from memos.hosting.ray_host import health_advice


def test_a_restarting_actor_is_named_with_what_happens_next():
    line = health_advice({"state": "RESTARTING", "restarts": 2, "pid": 41, "death_cause": None})
    assert "RESTARTING" in line and "restarted 2" in line and "'memos down' then 'memos up'" in line


def test_a_dead_actor_is_named_with_its_cause_and_the_fix():
    line = health_advice({"state": "DEAD", "restarts": 0, "pid": 41, "death_cause": "the constructor raised"})
    assert line.startswith("kernel actor DEAD: the constructor raised") and "'memos down' then 'memos up'" in line


def test_a_live_actor_reports_its_restarts():
    assert health_advice({"state": "ALIVE", "restarts": 3, "pid": 41, "death_cause": None}) == (
        "kernel actor ALIVE (pid 41), restarted 3 time(s) by Ray")


def test_no_actor_at_all_is_named_too():
    assert "no kernel actor" in health_advice(None)
