"""Long operations as jobs (``memos.kernel.jobs``): a distillation's progress is visible while it trains, it can be
cancelled (nothing committed, no file left), who may see and cancel a job, migrations report per-memory progress,
and a policy's distill rule trains an adapter through the kernel. The model host is the scripted FakeModelPort."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fakes import FakeModelPort
from threads import in_thread, wait_for

from memos.errors import Cancelled, InvalidState, InvalidSyscall, NotFound, PermissionDenied, VersionConflict
from memos.schedulers.engine import compile_policy
from memos.schedulers.loader import parse_spec
from memos.schedulers.runner import PolicyRunner
from memos.types import Kind


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


def facts(mem) -> list[str]:
    mem.create_cube("team/facts")
    return [mem.write("team/facts", t).id for t in ("Mara keeps the key in Trumwick.", "The vault code is 4417.")]


def test_a_distillation_shows_its_progress_while_it_trains_then_ends_done(mem, model_port):
    ids = facts(mem)
    model_port.hold = threading.Event()
    out, thread = in_thread(lambda: mem.distill(ids, "team/facts"))
    job = wait_for(lambda: next((j for j in mem.jobs(running_only=True) if j.step >= 1), None))
    assert job.op == "distill" and job.principal == "agent:alice" and job.state == "running"
    assert job.memory_ids == tuple(ids) and job.cubes == ("team/facts",) and job.phase == "train"
    assert job.total == 3 and job.loss == pytest.approx(1.0) and job.target is not None
    model_port.hold.set()
    thread.join(10)
    adapter = out["result"]
    assert adapter.id == job.target and adapter.kind == Kind.PARAMETRIC
    ended = next(j for j in mem.jobs() if j.id == job.id)
    assert ended.state == "done" and ended.step == 3 and ended.ended_at is not None
    assert mem.jobs(running_only=True) == ()


def test_a_cancelled_distillation_commits_nothing_and_leaves_no_file(mem, kernel, model_port):
    ids = facts(mem)
    model_port.hold = threading.Event()
    out, thread = in_thread(lambda: mem.distill(ids, "team/facts"))
    job = wait_for(lambda: next(iter(mem.jobs(running_only=True)), None))
    cancelled = mem.cancel(job.id)
    assert cancelled.cancel_requested_by == "agent:alice"
    thread.join(10)
    assert isinstance(out.get("error"), Cancelled) and "cancelled by agent:alice" in str(out["error"])
    assert [m.kind for m in mem.list("team/facts")] == [Kind.PLAINTEXT, Kind.PLAINTEXT]
    assert not list(Path(kernel.blob_dir).rglob("*.safetensors"))
    ended = next(j for j in mem.jobs() if j.id == job.id)
    assert ended.state == "cancelled" and ended.error.startswith("cancelled:")
    assert model_port._distills == {}  # the kernel forgot the host's job
    with pytest.raises(InvalidState, match="already ended"):
        mem.cancel(job.id)
    failed = [e for e in mem.events(limit=1000).events if e.type == "job_failed"]
    assert [(e.data["job"], e.data["op"], e.data["code"], e.memory_id) for e in failed] == [
        (job.id, "distill", "cancelled", job.target)]
    audit = [r for r in mem.audit("team/facts", limit=1000) if r.op in ("distill", "cancel")]
    assert [(r.op, r.outcome) for r in audit] == [("cancel", "ok"), ("distill", "cancelled")]


def test_who_may_see_and_cancel_a_job(mem, model_port):
    ids = facts(mem)
    mem.grant("team/facts", "agent:reader", "read")
    mem.grant("team/facts", "agent:writer", "write")
    model_port.hold = threading.Event()
    out, thread = in_thread(lambda: mem.distill(ids, "team/facts"))
    job = wait_for(lambda: next(iter(mem.jobs(running_only=True)), None))
    assert mem.as_principal("agent:stranger").jobs() == ()
    with pytest.raises(NotFound):
        mem.as_principal("agent:stranger").cancel(job.id)  # existence concealed
    assert [j.id for j in mem.as_principal("agent:reader").jobs()] == [job.id]
    with pytest.raises(PermissionDenied, match="write"):
        mem.as_principal("agent:reader").cancel(job.id)
    assert mem.as_principal("agent:writer").cancel(job.id).cancel_requested_by == "agent:writer"
    thread.join(10)
    assert isinstance(out["error"], Cancelled)
    with pytest.raises(NotFound):
        mem.cancel("job_00000000deadbeef")


def test_a_source_edited_since_the_caller_saw_it_is_refused(mem):
    ids = facts(mem)
    mem.update(ids[0], content="Mara keeps the key in Pelmark now.")
    with pytest.raises(VersionConflict):
        mem.distill(ids, "team/facts", expected_versions=[1, 1])
    assert mem.distill(ids, "team/facts", expected_versions=[2, 1]).provenance.derived_from[0].version == 2


def test_a_migration_to_activation_reports_each_memory_and_can_be_cancelled(mem, kernel, model_port, monkeypatch):
    mem.create_cube("team/x")
    ids = [mem.write("team/x", f"note number {i}").id for i in range(3)]
    gate = threading.Event()
    built = []
    real = model_port.build_activation

    def slow(text, path):
        built.append(path)
        if len(built) == 2:
            gate.wait(10)
        return real(text, path)

    monkeypatch.setattr(model_port, "build_activation", slow)
    out, thread = in_thread(lambda: mem.migrate(ids, "activation"))
    job = wait_for(lambda: next((j for j in mem.jobs(running_only=True) if j.step == 1), None))
    assert job.op == "migrate" and job.total == 3 and job.memory_ids == tuple(ids) and job.phase == "build activation"
    mem.cancel(job.id)
    gate.set()
    thread.join(10)
    assert isinstance(out["error"], Cancelled)
    assert [m.kind for m in mem.list("team/x")] == [Kind.PLAINTEXT] * 3
    assert not any(Path(p).exists() for p in built)  # the abort deleted what was built


def test_a_demotion_is_not_a_job(mem):
    mem.create_cube("team/x")
    m = mem.write("team/x", "hot note")
    mem.migrate([m.id], "activation")
    mem.migrate([m.id], "plaintext")
    assert [j.op for j in mem.jobs()] == ["migrate"]  # only the build of the cache was followed


def test_a_policy_distill_rule_trains_an_adapter_attributed_to_the_rule(mem, kernel, clock):
    ids = facts(mem)
    mem.write("team/facts", "A third stable fact about Pelmark.")
    text = (
        "name: knowledge\n"
        "applies_to: {cubes: [team/*]}\n"
        "rules:\n"
        "  - name: distill-stable\n"
        "    when: {kind: plaintext}\n"
        "    then: {distill: {min_group: 3}}\n"
    )
    policy = compile_policy(parse_spec(text, "knowledge.yaml"), source="knowledge.yaml")
    runner = PolicyRunner(kernel.execute, [policy], clock=clock.now)
    report = runner.run_once("knowledge")
    assert [(o.op, o.outcome) for o in report.outcomes] == [("distill", "ok")]
    adapters = [m for m in mem.list("team/facts") if m.kind == Kind.PARAMETRIC]
    assert len(adapters) == 1
    adapter = adapters[0]
    assert adapter.provenance.policy_rule == "knowledge/distill-stable" and adapter.provenance.author == "system"
    assert set(ids) <= {r.id for r in adapter.provenance.derived_from}
    assert "rule:knowledge/distill-stable" in adapter.tags
    assert [j.rule for j in mem.as_principal("system").jobs()] == ["knowledge/distill-stable"]
    # What an up-to-date adapter holds is not distilled again.
    assert runner.run_once("knowledge").planned == 0


def test_a_stale_adapter_is_retrained_from_its_sources_current_versions(mem, kernel):
    ids = facts(mem)
    third = mem.write("team/facts", "Orsk was born in Piltravey.").id
    adapter = mem.distill([*ids, third], "team/facts", tags=["knowledge"])
    old_path = Path(adapter.payload.path)
    mem.update(ids[0], content="Mara keeps the key in Pelmark now.")
    mem.delete(third)
    assert mem.read(adapter.id).stale
    retrained = mem.distill(replaces=adapter.id)
    assert retrained.id == adapter.id and retrained.version == 2 and not retrained.stale
    assert [(r.id, r.version) for r in retrained.provenance.derived_from] == [(ids[0], 2), (ids[1], 1)]  # third forgotten
    assert retrained.tags == ("knowledge",) and "Pelmark" in retrained.content and "Piltravey" not in retrained.content
    assert Path(retrained.payload.path).exists() and old_path.exists()  # v1 can become current again (rollback)
    assert [v.version for v in mem.history(adapter.id)] == [1, 2]
    with pytest.raises(InvalidState, match="replaces names a parametric memory"):
        mem.distill(replaces=ids[1])
    with pytest.raises(InvalidSyscall, match="ids.*replaces"):
        mem.distill(cube="team/facts")


def compiled(text: str, name: str):
    return compile_policy(parse_spec(text, f"{name}.yaml"), source=f"{name}.yaml")


DISTILL_FACTS = (
    "name: {name}\n"
    "applies_to: {{cubes: [team/*]}}\n"
    "rules:\n"
    "  - name: distill-stable\n"
    "    when: {{kind: plaintext, tags: {{none: [scratch]}}}}\n"
    "    then: {{distill: {{min_group: 3}}}}\n"
)
ARCHIVE_SCRATCH = (
    "name: tidy\n"
    "applies_to: {cubes: [team/*]}\n"
    "rules:\n"
    "  - name: archive-scratch\n"
    "    when: {kind: plaintext, tags: {any: [scratch]}}\n"
    "    then: archive\n"
)


def test_a_training_distillation_lets_other_policies_run_and_is_not_started_twice(mem, kernel, model_port, clock):
    """While policy ``knowledge`` trains an adapter (minutes on a real host), policy ``tidy`` evaluates and acts; a
    second distilling policy does not train the same memories again; ``knowledge`` itself waits for its run."""
    ids = facts(mem)
    ids.append(mem.write("team/facts", "A third stable fact about Pelmark.").id)
    scratch = mem.write("team/facts", "scratch: call back Ilsa", tags=["scratch"]).id
    runner = PolicyRunner(kernel.execute, [compiled(DISTILL_FACTS.format(name="knowledge"), "knowledge"),
                                           compiled(DISTILL_FACTS.format(name="copycat"), "copycat"),
                                           compiled(ARCHIVE_SCRATCH, "tidy")], clock=clock.now)
    model_port.hold = threading.Event()
    knowledge, thread = in_thread(lambda: runner.run_once("knowledge"))
    wait_for(lambda: any(j.step >= 1 for j in mem.as_principal("system").jobs(running_only=True)))

    try:
        others, others_thread = in_thread(lambda: (runner.run_once("tidy"), runner.run_once("copycat")))
        others_thread.join(10)
        assert "result" in others, "other policies were blocked by the training"
        tidy, copycat = others["result"]
        again, again_thread = in_thread(lambda: runner.run_once("knowledge"))
        time.sleep(0.2)
        assert "result" not in again  # the same policy waits for its own run to end
    finally:
        model_port.hold.set()

    assert [(o.rule, o.outcome) for o in tidy.outcomes] == [("tidy/archive-scratch", "ok")]
    assert mem.read(scratch).state.value == "archived"
    [refused] = copycat.outcomes
    assert (refused.op, refused.outcome) == ("distill", "not_executed")
    assert refused.detail == "its memories are being distilled by knowledge/distill-stable"
    thread.join(10)
    again_thread.join(10)
    assert [(o.op, o.outcome) for o in knowledge["result"].outcomes] == [("distill", "ok")]
    assert again["result"].planned == 0  # it saw the adapter its first run made
    assert len([m for m in mem.list("team/facts") if m.kind == Kind.PARAMETRIC]) == 1
    assert runner._distilling == {}
