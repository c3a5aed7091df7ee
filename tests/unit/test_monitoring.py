"""Monitoring: what a policy evaluation leaves in the event outbox (``policy_fired``, ``job_failed``) and who may
see it, what observers are told, the Ray metrics derived from events (with a fake ``ray.util.metrics``), and the
progress of an index rebuild."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
from fakes import FakeModelPort

from memos.client import Memos
from memos.kernel import events as ev
from memos.schedulers.loader import load_policy
from memos.schedulers.runner import PolicyRunner
from memos.service import KernelService
from memos.transports import InProcessTransport
from memos.types import Right

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DAY = 86400.0


class Recorder:
    """A KernelObserver that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, ev.KernelEvent]] = []
        self.runs: list[tuple[str, float, dict]] = []

    def syscall(self, op, outcome, duration_s):
        pass

    def event(self, event):
        self.events.append((ev.type_of(event), event.cube, event))

    def policy_run(self, policy, duration_s, outcomes):
        self.runs.append((policy, duration_s, dict(outcomes)))


@pytest.fixture
def model_port():
    return FakeModelPort()


@pytest.fixture
def recorder(kernel):
    r = Recorder()
    kernel.observers.append(r)
    return r


def service_with_default_policy(kernel, clock, execute=None) -> KernelService:
    runner = PolicyRunner(execute or kernel.execute, [load_policy(POLICIES / "default.yaml")], clock=clock.now)
    return KernelService(kernel, runner)


def events_of(mem: Memos, type_: str):
    return [e for e in mem.events(limit=1000).events if e.type == type_]


def test_a_policy_run_that_acted_is_a_policy_fired_event_in_its_cube(kernel, clock, recorder):
    service = service_with_default_policy(kernel, clock)
    alice = Memos(InProcessTransport(service), "agent:alice")
    alice.create_cube("team/x")
    forgotten = alice.write("team/x", "a trivia fact nobody reads")
    clock.advance(120 * DAY)

    [report] = service.run_policy("default")

    assert report["planned"] == 1
    [fired] = events_of(alice, "policy_fired")
    assert fired.cube == "team/x" and fired.principal == "system" and fired.memory_id is None
    assert {k: fired.data[k] for k in ("policy", "planned", "ok", "failed", "not_executed")} == {
        "policy": "default", "planned": 1, "ok": 1, "failed": 0, "not_executed": 0}
    assert fired.data["rules"] == {"default/archive-forgotten": 1}
    archived = events_of(alice, "archived")
    assert archived[-1].memory_id == forgotten.id and archived[-1].data["rule"] == "default/archive-forgotten"
    assert not events_of(alice, "job_failed")
    # The observers were told too: the event after it committed, and the run itself.
    assert ("policy_fired", "team/x") in [(t, c) for t, c, _ in recorder.events]
    assert recorder.runs[-1][0] == "default" and recorder.runs[-1][2] == {"ok": 1}
    # Someone who may not read team/x does not see it.
    bob = alice.as_principal("agent:bob")
    assert not events_of(bob, "policy_fired")
    alice.grant("team/x", "agent:bob", Right.READ)
    assert [e.seq for e in events_of(bob, "policy_fired")] == [fired.seq]


def test_a_run_that_planned_nothing_is_no_event_but_observers_count_it(kernel, clock, recorder):
    service = service_with_default_policy(kernel, clock)
    mem = Memos(InProcessTransport(service), "system")
    mem.create_cube("team/x")
    mem.write("team/x", "fresh")

    service.run_policy("default")

    assert not events_of(mem, "policy_fired")
    assert recorder.runs == [("default", recorder.runs[0][1], {})]


def test_a_run_across_cubes_is_for_superusers_only(kernel, clock):
    service = service_with_default_policy(kernel, clock)
    alice = Memos(InProcessTransport(service), "agent:alice")
    for cube in ("team/a", "team/b"):
        alice.create_cube(cube)
        alice.write(cube, f"old news in {cube}")
    clock.advance(120 * DAY)

    service.run_policy("default")

    [fired] = events_of(alice.as_principal("system"), "policy_fired")
    assert fired.cube is None and fired.data["ok"] == 2 and fired.data["rules"] == {"default/archive-forgotten": 2}
    assert not events_of(alice, "policy_fired")  # alice administers both cubes, but the event is in neither


def test_a_failed_policy_action_is_a_job_failed_event(kernel, clock, recorder):
    alice = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    alice.create_cube("team/x")
    m = alice.write("team/x", "old fact")
    clock.advance(120 * DAY)

    def edit_after_snapshot(principal, call):
        result = kernel.execute(principal, call)
        if call.op == "snapshot":
            alice.update(m.id, content="fresh fact")
        return result

    service = service_with_default_policy(kernel, clock, execute=edit_after_snapshot)
    [report] = service.run_policy("default")

    assert [o["outcome"] for o in report["outcomes"]] == ["conflict"]
    [failed] = events_of(alice, "job_failed")
    assert failed.cube == "team/x" and failed.memory_id == m.id
    assert failed.data["policy"] == "default" and failed.data["rule"] == "default/archive-forgotten"
    assert failed.data["op"] == "archive" and failed.data["code"] == "conflict" and failed.data["memories"] == [m.id]
    assert "version" in failed.data["message"]
    [fired] = events_of(alice, "policy_fired")
    assert (fired.data["planned"], fired.data["ok"], fired.data["failed"]) == (1, 0, 1)
    assert fired.seq < failed.seq
    assert recorder.runs[-1][2] == {"conflict": 1}


def test_record_event_commits_and_notifies(kernel, recorder):
    fired = ev.PolicyFired(cube=None, principal="system", policy="p", planned=2)
    kernel.record_event(fired)

    [event] = Memos(InProcessTransport(KernelService(kernel)), "system").events().events
    assert (event.type, event.cube, event.principal, event.data) == ("policy_fired", None, "system", fired.data())
    assert event.data["policy"] == "p" and event.data["planned"] == 2
    assert ev.from_record(event.type, event.cube, event.memory_id, event.principal, event.data) == fired
    assert recorder.events == [("policy_fired", None, fired)]


def test_an_observer_that_raises_does_not_fail_the_run(kernel, clock):
    class Broken(Recorder):
        def policy_run(self, policy, duration_s, outcomes):
            raise RuntimeError("metrics backend down")

        def event(self, event):
            raise RuntimeError("metrics backend down")

    kernel.observers.append(Broken())
    service = service_with_default_policy(kernel, clock)
    mem = Memos(InProcessTransport(service), "system")
    mem.create_cube("team/x")
    mem.write("team/x", "old")
    clock.advance(120 * DAY)
    [report] = service.run_policy("default")
    assert report["outcomes"][0]["outcome"] == "ok"
    assert events_of(mem, "policy_fired")


# --------------------------------------------------------------------------------------------------- Ray metrics


class FakeMetric:
    def __init__(self, name, description="", tag_keys=(), boundaries=None):
        self.name, self.tag_keys, self.boundaries = name, tuple(tag_keys), boundaries
        self.values: dict[tuple, float] = {}

    def _key(self, tags):
        tags = tags or {}
        assert set(tags) == set(self.tag_keys), (self.name, tags)
        assert all(isinstance(v, str) for v in tags.values()), (self.name, tags)
        return tuple(sorted(tags.items()))

    def inc(self, value=1.0, tags=None):
        assert value > 0
        key = self._key(tags)
        self.values[key] = self.values.get(key, 0) + value

    def observe(self, value, tags=None):
        self.values.setdefault(self._key(tags), []).append(value)

    def set(self, value, tags=None):
        self.values[self._key(tags)] = value


@pytest.fixture
def metrics(monkeypatch):
    """RayMetricsObserver on a fake ``ray.util.metrics``; returns (observer, metrics by name)."""
    made: dict[str, FakeMetric] = {}

    def factory(*args, **kwargs):
        metric = FakeMetric(*args, **kwargs)
        made[metric.name] = metric
        return metric

    fake = types.ModuleType("ray.util.metrics")
    fake.Counter = fake.Gauge = fake.Histogram = factory
    util = types.ModuleType("ray.util")
    util.metrics = fake
    ray = types.ModuleType("ray")
    ray.util = util
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", util)
    monkeypatch.setitem(sys.modules, "ray.util.metrics", fake)
    from memos.hosting.metrics import RayMetricsObserver

    return RayMetricsObserver(), made


def tags(**kw):
    return tuple(sorted(kw.items()))


def test_events_become_the_tiering_metrics(metrics):
    observer, m = metrics
    promote = ev.Migrated(cube="c", frm="plaintext", to="activation", rule="default/promote-hot", version=2)
    observer.event(promote)
    observer.event(promote)
    observer.event(ev.Migrated(cube="c", frm="activation", to="plaintext", rule=None, version=3))
    observer.event(ev.Evicted(cube="c", tier="disk", reason="activation disk budget"))
    observer.event(ev.Evicted(cube="c", tier="ram", reason="model host RAM budget"))
    observer.event(ev.ActivationUsed(cube="c", tier="ram"))
    observer.event(ev.ActivationUsed(cube="c", tier="disk"))
    observer.event(ev.ActivationUsed(cube="c", tier="ram"))
    observer.event(ev.AdapterUsed(cube="c", stale=True))
    observer.event(ev.AdapterUsed(cube="c", stale=False))
    observer.event(ev.Distilled(cube="c", rule=None, sources=8, version=1))
    observer.event(ev.Written(cube="c", version=1, trust="trusted"))

    assert m["memos_migrations_total"].values == {
        tags(frm="plaintext", to="activation", rule="default/promote-hot"): 2,
        tags(frm="activation", to="plaintext", rule=""): 1,
    }
    assert m["memos_evictions_total"].values == {
        tags(tier="disk", reason="activation disk budget"): 1, tags(tier="ram", reason="model host RAM budget"): 1}
    assert m["memos_activation_loads_total"].values == {tags(tier="ram"): 2, tags(tier="disk"): 1}
    assert m["memos_adapter_uses_total"].values == {tags(stale="true"): 1, tags(stale="false"): 1}
    assert m["memos_distillations_total"].values == {(): 1}
    assert sum(m["memos_events_total"].values.values()) == 12
    assert m["memos_events_total"].values[tags(type="migrated")] == 3


def test_policy_runs_become_run_and_action_metrics(metrics):
    observer, m = metrics
    observer.policy_run("default", 0.25, {"ok": 3, "conflict": 1})
    observer.policy_run("default", 0.5, {})
    observer.policy_run("team", 1.5, {"not_executed": 2})

    assert m["memos_policy_runs_total"].values == {tags(policy="default"): 2, tags(policy="team"): 1}
    assert m["memos_policy_run_seconds"].values == {tags(policy="default"): [0.25, 0.5], tags(policy="team"): [1.5]}
    assert m["memos_policy_actions_total"].values == {
        tags(policy="default", outcome="ok"): 3, tags(policy="default", outcome="conflict"): 1,
        tags(policy="team", outcome="not_executed"): 2,
    }


def test_kernel_jobs_become_a_gauge_by_op_and_state(metrics, kernel):
    observer, m = metrics
    migrate = kernel.jobs.start("migrate", "agent:a", ["c"], ["m_1"], total=2)
    distill = kernel.jobs.start("distill", "agent:a", ["c"], ["m_1"])
    observer.refresh_jobs(kernel.jobs.all())
    assert m["memos_jobs"].values == {tags(op="migrate", state="running"): 1, tags(op="distill", state="running"): 1}
    migrate.end("done")
    distill.end("cancelled", "cancelled: by agent:a")
    observer.refresh_jobs(kernel.jobs.all())
    assert m["memos_jobs"].values == {
        tags(op="migrate", state="running"): 0, tags(op="distill", state="running"): 0,
        tags(op="migrate", state="done"): 1, tags(op="distill", state="cancelled"): 1,
    }


def test_model_host_usage_becomes_gauges_and_a_load_counter(metrics):
    from memos.hosting.metrics import ModelMetrics

    _, m = metrics
    model = ModelMetrics()
    model.refresh({"payloads": 2, "bytes": 4096, "adapters": 1, "adapter_loads": 3, "distillations_running": 1})
    model.refresh({"payloads": 1, "bytes": 2048, "adapters": 2, "adapter_loads": 5, "distillations_running": 0,
                   "gpu_payloads": 1, "gpu_bytes": 1024})
    assert m["memos_model_ram_payloads"].values == {(): 1} and m["memos_model_ram_bytes"].values == {(): 2048}
    assert m["memos_model_gpu_payloads"].values == {(): 1} and m["memos_model_gpu_bytes"].values == {(): 1024}
    assert m["memos_model_adapters_loaded"].values == {(): 2}
    assert m["memos_model_adapter_loads_total"].values == {(): 5}  # the counter follows the pool's total
    assert m["memos_model_distillations_running"].values == {(): 0}


# --------------------------------------------------------------------------------------------------- index rebuild


def test_reconcile_reports_its_progress(kernel):
    mem = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    mem.create_cube("team/x")
    for i in range(300):
        mem.write("team/x", f"note {i}")
    kernel.index.delete(sorted(kernel.index.ids())[:260])  # as if chroma/ had lost most of its entries
    seen: list[tuple[str, int, int]] = []

    report = kernel.indexer.reconcile(deep=True, progress=lambda *p: seen.append(p))

    assert report.added == 260
    assert seen == [("add", 0, 260), ("add", 256, 260), ("add", 260, 260), ("check", 0, 40), ("check", 40, 40)]
    assert KernelService(kernel).doctor(repair=True, progress=lambda *p: seen.append(p))["reconcile"]["added"] == 0
    assert seen[-2:] == [("check", 0, 300), ("check", 300, 300)]


# --------------------------------------------------------------------------------------------------- memos top


def test_top_shows_policy_runs_and_failed_actions(kernel, clock):
    from memos.cli.observe import _top_frame

    alice = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    alice.create_cube("team/x")
    old = alice.write("team/x", "old fact")
    alice.write("team/x", "older fact")
    clock.advance(120 * DAY)

    def edit_after_snapshot(principal, call):
        result = kernel.execute(principal, call)
        if call.op == "snapshot" and old.version == alice.read(old.id).version:
            alice.update(old.id, content="fresh fact")
        return result

    service_with_default_policy(kernel, clock, execute=edit_after_snapshot).run_policy("default")
    events = alice.events(limit=1000).events
    runs = [e for e in events if e.type in ("policy_fired", "job_failed")]

    frame = _top_frame(alice.stats(), 0.0, [], runs)

    lines = frame.splitlines()
    at = lines.index("recent policy runs:")
    assert "default" in lines[at + 1] and "planned 2, ok 1, failed 1" in lines[at + 1]
    assert "[default/archive-forgotten x2]" in lines[at + 1]
    assert f"failed archive {old.id} rule=default/archive-forgotten [conflict]" in lines[at + 2]
    assert "recent policy runs:\n  (none yet)" in _top_frame(alice.stats(), 0.0, [], [])


# --------------------------------------------------------------------------------------------------- event tails


def test_events_by_type_and_the_newest_first_window(kernel):
    alice = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    alice.create_cube("team/x")
    ids = [alice.write("team/x", f"note {i}").id for i in range(30)]
    alice.delete(ids[3])
    bob = alice.as_principal("agent:bob")
    bob.create_cube("team/bob")
    bob.write("team/bob", "bob's note")

    oldest = alice.events(types=["written"], limit=5)
    newest = alice.events(types=["written"], limit=5, latest=True)

    assert [e.memory_id for e in oldest.events] == ids[:5] and oldest.next_seq == oldest.events[-1].seq
    assert [e.memory_id for e in newest.events] == ids[-5:]  # in order, and not bob's (unreadable) write
    assert newest.next_seq == newest.events[-1].seq
    assert {e.type for e in alice.events(types=["written", "deleted"], limit=1000).events} == {"written", "deleted"}
    assert alice.events(newest.next_seq, types=["written"]).events == ()
    assert alice.events(types=["no-such-type"], latest=True).events == ()


def test_top_shows_the_newest_migrations_of_a_long_log(kernel, monkeypatch, capsys):
    """``memos top`` on a data dir with thousands of events shows the newest ones in its first frame."""
    from memos import cli

    alice = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    alice.create_cube("team/x")
    for i in range(1200):
        kernel.record_event(ev.Migrated(cube="team/x", memory_id=f"m{i}", principal="system", frm="plaintext",
                                        to="activation", rule="r/hot", version=2))
    for i in range(1500):
        alice.write("team/x", f"note {i}")

    class Runtime:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def client(self, principal):
            return alice.as_principal(principal)

    monkeypatch.setattr(cli.common, "open_runtime", lambda args: Runtime())
    assert cli.main(["top", "--once", "--as", "agent:alice"]) == 0
    frame = capsys.readouterr().out
    shown = [line.split()[2] for line in frame.split("recent migrations and evictions:")[1].splitlines()[1:9]]
    assert shown == [f"m{i}" for i in range(1192, 1200)], frame

    # `memos events --tail N`: the newest N (of the asked types), then what follows.
    assert cli.main(["events", "--tail", "3", "--type", "migrated", "--as", "agent:alice"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["type"], e["memory_id"]) for e in printed] == [("migrated", f"m{i}") for i in (1197, 1198, 1199)]


def test_memos_events_takes_a_sequence_number_or_a_shard_cursor(monkeypatch, capsys) -> None:
    """Over kernel shards ``next_seq`` is ``shards:<seq>,<seq>``: the CLI passes it back as given; junk is refused."""
    from memos import cli
    from memos.types import EventList

    asked: list[object] = []

    class Client:
        def events(self, since, **kwargs):
            asked.append(since)
            return EventList(events=(), next_seq=since)

    class Runtime:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def client(self, principal):
            return Client()

    monkeypatch.setattr(cli.common, "open_runtime", lambda args: Runtime())
    assert cli.main(["events", "--since", "shards:3,7"]) == 0
    assert cli.main(["events", "--since", "42"]) == 0
    assert asked == ["shards:3,7", 42]
    with pytest.raises(SystemExit):
        cli.main(["events", "--since", "shards:3,x"])
    assert "is not a cursor" in capsys.readouterr().err
