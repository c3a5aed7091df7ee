"""Watching the kernel as a user does: ``memos events --follow`` (the real CLI, in its own process) against a
``memos up`` cluster with the model, while a policy promotes a memory to activation memory. The follower must show
the migration with the rule that made it and the policy run; ``memos top`` and the Ray metrics export must show them
too, and ``memos doctor --repair`` says what it does on stderr."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from ray_metrics import scrape_until

pytestmark = pytest.mark.integration

DASHBOARD_PORT, METRICS_PORT = 28475, 28476

POLICY = """\
name: promote
applies_to: {cubes: ["ops/**"]}
schedule: {every: 1h}          # run by hand below, not by the schedule
rules:
  - name: promote-read
    when: {kind: plaintext, reads: {at_least: 1}}
    then: {migrate: activation}
"""


def environment(home, policy, model_cache) -> dict[str, str]:
    # A user HOME of its own: no Ray auth token yet, as on a fresh machine (`memos up` must make one).
    return {**os.environ, "HOME": str(home / "user"), "MEMOS_HOME": str(home), "MEMOS_DASHBOARD_PORT": str(DASHBOARD_PORT),
            "MEMOS_METRICS_PORT": str(METRICS_PORT), "MEMOS_MODEL": "smollm2", "MEMOS_POLICIES": str(policy),
            "MEMOS_MODEL_CACHE": str(model_cache)}


def memos(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "memos.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def follow(env) -> tuple[subprocess.Popen, queue.Queue]:
    """``memos events --follow`` in its own process; its stdout lines arrive on the queue."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "memos.cli", "events", "--follow", "--as", "system", "--interval", "0.3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines


def wait_for_events(lines: queue.Queue, done, timeout: float) -> list[dict]:
    """Parse JSON lines from the follower until ``done(events)`` or the timeout."""
    events: list[dict] = []
    deadline = time.time() + timeout
    while not done(events) and time.time() < deadline:
        try:
            events.append(json.loads(lines.get(timeout=max(0.1, deadline - time.time()))))
        except queue.Empty:
            break
    return events


def test_events_follow_shows_a_policy_migration_with_its_rule(tmp_path, model_cache_dir):
    home = tmp_path / "home"
    home.mkdir()
    policy = tmp_path / "promote.yaml"
    policy.write_text(POLICY)
    env = environment(home, policy, model_cache_dir)  # the converted model, made once
    up = memos(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert (home / "user" / ".ray" / "auth_token").stat().st_size > 0
    info = json.loads((home / "cluster.json").read_text())
    follower = None
    try:
        setup = (
            "from memos.runtime import Runtime\n"
            "with Runtime.start(mode='cluster') as rt:\n"
            "    c = rt.client('agent:ops'); c.create_cube('ops/notes')\n"
            "    hot = c.write('ops/notes', 'The staging database restarts every night at 02:00 UTC.')\n"
            "    c.write('ops/notes', 'Nobody reads this one.')\n"
            "    c.read(hot.id)\n"
            "    print(hot.id)\n"
        )
        made = subprocess.run([sys.executable, "-c", setup], env=env, capture_output=True, text=True, timeout=180)
        assert made.returncode == 0, made.stderr[-3000:]
        hot_id = made.stdout.split()[-1]

        follower, lines = follow(env)
        written = wait_for_events(lines, lambda ev: sum(e["type"] == "written" for e in ev) >= 2, timeout=60)
        assert [e["memory_id"] for e in written if e["type"] == "written"][0] == hot_id, follower.stderr

        run = memos(env, "policy", "run", "promote", "--json")  # the machine form (a table by default)
        assert run.returncode == 0, run.stdout + run.stderr
        [report] = json.loads(run.stdout)
        assert [(o["rule"], o["outcome"], o["memories"]) for o in report["outcomes"]] == [
            ("promote/promote-read", "ok", [hot_id])]

        seen = wait_for_events(
            lines, lambda ev: {"migrated", "policy_fired"} <= {e["type"] for e in ev}, timeout=60)
        [migrated] = [e for e in seen if e["type"] == "migrated"]
        assert migrated["memory_id"] == hot_id and migrated["cube"] == "ops/notes"
        assert migrated["data"]["frm"] == "plaintext" and migrated["data"]["to"] == "activation"
        assert migrated["data"]["rule"] == "promote/promote-read" and migrated["principal"] == "system"
        [fired] = [e for e in seen if e["type"] == "policy_fired"]
        assert fired["cube"] == "ops/notes" and fired["data"]["policy"] == "promote"
        assert (fired["data"]["planned"], fired["data"]["ok"], fired["data"]["failed"]) == (1, 1, 0)
        assert fired["data"]["rules"] == {"promote/promote-read": 1}

        top = memos(env, "top", "--once", "--as", "system")
        assert top.returncode == 0, top.stderr
        assert f"migrated   {hot_id} plaintext->activation rule=promote/promote-read" in top.stdout
        runs = top.stdout.split("recent policy runs:")[1]
        assert "promote" in runs and "planned 1, ok 1, failed 0" in runs

        doctor = memos(env, "doctor", "--repair")
        assert doctor.returncode == 0 and json.loads(doctor.stdout)["reconcile"]["added"] == 0, doctor.stderr
        assert "repairing the vector index in the kernel actor" in doctor.stderr and "done" in doctor.stderr

        # The same, counted on Ray's metrics export. Gauges are snapshots (the kernel refreshes them every
        # GAUGE_PERIOD_S, Ray exports them on its own period), so wait until every expected value is there.
        def series(text: str, metric: str) -> list[str]:
            return [line for line in text.splitlines() if line.startswith(f"ray_memos_{metric}{{")]

        def expected(text: str) -> dict[str, bool]:
            return {
                "migration by rule": any('rule="promote/promote-read"' in line and 'to="activation"' in line
                                         for line in series(text, "migrations_total")),
                "policy run": any('policy="promote"' in line for line in series(text, "policy_runs_total")),
                "policy action ok": any('outcome="ok"' in line for line in series(text, "policy_actions_total")),
                # The promotion ran as a kernel job, now ended.
                "migrate job done": any('op="migrate"' in line and 'state="done"' in line
                                        and float(line.rsplit(" ", 1)[1]) == 1 for line in series(text, "jobs")),
                # The model host reports its own gauges (the KV build left no RAM payload).
                "model gauges": any(line.startswith("ray_memos_model_ram_payloads") for line in text.splitlines()),
            }

        text = scrape_until(info["metrics_url"], lambda t: all(expected(t).values()), timeout=120)
        missing = [name for name, ok in expected(text).items() if not ok]
        assert not missing, f"missing {missing} in:\n{text}"
    finally:
        if follower is not None:
            follower.terminate()
            follower.wait(timeout=30)
        down = memos(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr


def test_doctor_repair_draws_the_index_check_on_stderr(tmp_path):
    """In-process (no cluster): the repair's phases and counts on stderr, the JSON report alone on stdout. (A lost
    index is re-added when the kernel opens, before the repair runs; the repair then checks every entry.)"""
    home = tmp_path / "home"
    env = {**os.environ, "MEMOS_HOME": str(home), "MEMOS_MODEL": "none"}
    setup = (
        "from memos.runtime import Runtime\n"
        "with Runtime.start(mode='inprocess') as rt:\n"
        "    c = rt.client('agent:ops'); c.create_cube('ops/notes')\n"
        "    for i in range(5): c.write('ops/notes', f'runbook step {i}')\n"
    )
    made = subprocess.run([sys.executable, "-c", setup], env=env, capture_output=True, text=True, timeout=180)
    assert made.returncode == 0, made.stderr[-3000:]

    doctor = memos(env, "doctor", "--repair")

    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)  # nothing but the report on stdout
    assert report["reconcile"] == {"expected": 5, "indexed": 5, "added": 0, "removed": 0, "fixed_metadata": 0}
    lines = doctor.stderr.splitlines()
    assert lines[0].startswith("index: embedding missing entries  0"), lines
    assert lines[-1].startswith("index: checking metadata") and "5/5 (100%)" in lines[-1], lines
