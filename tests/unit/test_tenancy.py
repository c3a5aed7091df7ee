"""One principal must not hurt another (issue 13, kernel side): activation budgets per cube under a global cap that
evicts fairly and never writes into cubes the caller cannot write; ``CapacityExceeded`` tells only what the caller
may see; distillations queue with per-principal turns, a bound on steps and time, and the target cube's admins may
cancel; ``distill(replaces=)`` conceals unreadable sources and an adapter does not copy private text into a shared
cube; a re-created cube name starts a new incarnation with its own audit log and events; ``stats`` is scoped."""

from __future__ import annotations

import threading

import pytest
from fakes import FakeModelPort
from threads import in_thread, wait_for

from memos.errors import Cancelled, CapacityExceeded, InvalidSyscall, MemosError
from memos.kernel.budget import ActivationBudget
from memos.types import Kind

BOB = "agent:bob"
CAROL = "agent:carol"


@pytest.fixture
def model_port() -> FakeModelPort:
    return FakeModelPort()


# ------------------------------------------------------------------------------------------------ activation budgets


def test_bob_migrating_his_memory_never_demotes_alices_or_stales_her_adapter(mem, kernel):
    kernel.budgets = ActivationBudget(max_memories=1)
    mem.create_cube("team/alice")
    secret = mem.write("team/alice", "Alice's launch date is the ninth of March.")
    mem.migrate([secret.id], "activation")
    adapter = mem.distill([secret.id], "team/alice")
    bob = mem.as_principal(BOB)
    bob.create_cube("team/bob")
    note = bob.write("team/bob", "Bob's note about lunch.")
    with pytest.raises(CapacityExceeded) as refused:
        bob.migrate([note.id], "activation")
    said = f"{refused.value.message} {refused.value.details}"
    assert "team/alice" not in said and secret.id not in said and "2 caches" not in said  # nothing of alice's
    assert [v.version for v in mem.history(secret.id)] == [1, 2]  # no version by anyone in alice's cube
    assert mem.read(secret.id).kind == Kind.ACTIVATION and not mem.read(adapter.id).stale
    assert bob.read(note.id).kind == Kind.PLAINTEXT


def test_each_cube_has_its_own_activation_budget(mem, kernel):
    kernel.budgets = ActivationBudget(cube_max_memories=1)
    mem.create_cube("team/alice")
    a1, a2 = (mem.write("team/alice", t) for t in ("alpha note", "beta note"))
    bob = mem.as_principal(BOB)
    bob.create_cube("team/bob")
    b1 = bob.write("team/bob", "gamma note")
    mem.migrate([a1.id], "activation")
    bob.migrate([b1.id], "activation")  # another cube: alice's cache stays
    assert mem.read(a1.id).kind == Kind.ACTIVATION
    mem.migrate([a2.id], "activation")  # alice's cube is full: her own least recently used cache goes
    assert (mem.read(a1.id).kind, mem.read(a2.id).kind) == (Kind.PLAINTEXT, Kind.ACTIVATION)
    assert bob.read(b1.id).kind == Kind.ACTIVATION


def test_the_global_cap_evicts_the_cube_most_over_its_fair_share_first(mem, kernel, clock):
    kernel.budgets = ActivationBudget(max_memories=4)
    mem.create_cube("team/b")
    old_b = mem.write("team/b", "the oldest cache of b")
    mem.migrate([old_b.id], "activation")  # least recently used of all
    mem.create_cube("team/a")
    for i in range(3):
        clock.advance(10)
        mem.migrate([mem.write("team/a", f"cache {i} of a").id], "activation")
    clock.advance(10)
    system = mem.as_principal("system")
    system.migrate([mem.write("team/b", "a new cache of b").id], "activation")
    kinds = {m.content: m.kind for m in system.list("team/a") + system.list("team/b")}
    assert kinds["the oldest cache of b"] == Kind.ACTIVATION  # b holds 2 of 4: its fair share
    assert kinds["cache 0 of a"] == Kind.PLAINTEXT  # a held 3 of 4: over its share, its LRU goes
    assert [kinds[f"cache {i} of a"] for i in (1, 2)] == [Kind.ACTIVATION] * 2


def test_promotion_and_demotion_do_not_stale_what_was_derived_from_the_text(mem, kernel):
    mem.create_cube("team/x")
    source = mem.write("team/x", "The vault code is 4417.")
    adapter = mem.distill([source.id], "team/x")
    mem.migrate([source.id], "activation")
    mem.migrate([source.id], "plaintext")
    assert not mem.read(adapter.id).stale  # the text it learnt is unchanged
    mem.update(source.id, content="The vault code is 5521.")
    assert mem.read(adapter.id).stale


# ------------------------------------------------------------------------------------------------ distillation queue


def test_distillations_wait_in_a_queue_and_take_turns_by_principal(mem, kernel, model_port, monkeypatch):
    mem.create_cube("team/a")
    mem.grant("team/a", BOB, "write")
    bob = mem.as_principal(BOB)
    b1, b2 = (bob.write("team/a", t).id for t in ("bob fact one", "bob fact two"))
    a1 = mem.write("team/a", "alice fact one").id
    started = []
    real = model_port.start_distill

    def record(facts, path, config):
        started.append(facts[0]["text"])
        return real(facts, path, config)

    monkeypatch.setattr(model_port, "start_distill", record)
    model_port.hold = threading.Event()
    system = mem.as_principal("system")
    runs = [in_thread(lambda: bob.distill([b1], "team/a"))]
    wait_for(lambda: started)
    runs.append(in_thread(lambda: bob.distill([b2], "team/a")))
    wait_for(lambda: len(system.jobs()) == 2)
    runs.append(in_thread(lambda: mem.distill([a1], "team/a")))
    wait_for(lambda: len(system.jobs()) == 3)
    assert sorted(j.phase for j in system.jobs()) == ["queued", "queued", "train"]
    assert started == ["bob fact one"]  # one trains at a time; the others wait, nobody is refused
    model_port.hold.set()
    for out, thread in runs:
        thread.join(10)
        assert out["result"].kind == Kind.PARAMETRIC
    assert started == ["bob fact one", "alice fact one", "bob fact two"]  # alice's turn before bob's second


def test_a_principal_may_queue_only_a_few_distillations(mem, kernel, model_port):
    kernel.distill_queue.per_principal = 1
    mem.create_cube("team/a")
    ids = [mem.write("team/a", f"fact {i}").id for i in range(3)]
    model_port.hold = threading.Event()
    system = mem.as_principal("system")
    first = in_thread(lambda: mem.distill([ids[0]], "team/a"))
    wait_for(lambda: system.jobs())
    second = in_thread(lambda: mem.distill([ids[1]], "team/a"))
    wait_for(lambda: len(system.jobs()) == 2)
    third, thread = in_thread(lambda: mem.distill([ids[2]], "team/a"))
    thread.join(5)
    assert isinstance(third.get("error"), CapacityExceeded) and "1 distillation" in str(third["error"])
    queued = next(j for j in system.jobs() if j.phase == "queued")
    mem.cancel(queued.id)  # a queued job is cancelled before it starts
    second[1].join(10)
    assert isinstance(second[0]["error"], Cancelled)
    model_port.hold.set()
    first[1].join(10)
    assert first[0]["result"].kind == Kind.PARAMETRIC


def test_distillation_steps_and_time_are_bounded(mem, kernel, model_port):
    mem.create_cube("team/a")
    ids = [mem.write("team/a", "a fact").id]
    with pytest.raises(InvalidSyscall, match=f"at most {kernel.distill_max_steps} steps"):
        mem.distill(ids, "team/a", steps=10_000)
    kernel.distill_max_s = 0.2
    model_port.hold = threading.Event()  # never set: the job would train forever
    out, thread = in_thread(lambda: mem.distill(ids, "team/a"))
    thread.join(5)
    model_port.hold.set()
    assert isinstance(out.get("error"), Cancelled) and "time bound" in str(out["error"])
    assert not [m for m in mem.list("team/a") if m.kind == Kind.PARAMETRIC]


def test_an_admin_of_the_target_cube_may_cancel_a_distillation_from_sources_she_cannot_read(mem, model_port):
    carol = mem.as_principal(CAROL)
    carol.create_cube("team/shared")
    carol.grant("team/shared", "agent:alice", "write")
    mem.create_cube("agent/alice/private")
    private = mem.write("agent/alice/private", "Alice's PIN is 2468.")
    model_port.hold = threading.Event()
    out, thread = in_thread(lambda: mem.distill([private.id], "team/shared"))
    job = wait_for(lambda: next(iter(mem.jobs(running_only=True)), None))
    [seen] = carol.jobs()
    assert seen.id == job.id and private.id not in seen.memory_ids and "agent/alice/private" not in seen.cubes
    assert carol.cancel(job.id).cancel_requested_by == CAROL
    thread.join(10)
    assert isinstance(out["error"], Cancelled)


# ------------------------------------------------------------------------------------------------ distill concealment


def test_distill_replaces_reveals_nothing_about_sources_the_caller_cannot_read(mem):
    mem.create_cube("team/shared")
    mem.grant("team/shared", BOB, "write")
    mem.create_cube("agent/alice/private")
    private = mem.write("agent/alice/private", "Alice's PIN is 2468.")
    adapter = mem.distill([private.id], "team/shared")
    bob = mem.as_principal(BOB)

    def bobs_answer():
        try:
            bob.distill(replaces=adapter.id)
        except MemosError as exc:
            return type(exc), exc.message, exc.details
        return None

    while_active = bobs_answer()
    mem.archive(private.id)
    assert bobs_answer() == while_active and while_active is not None
    mem.delete(private.id)
    assert bobs_answer() == while_active


def test_an_adapter_in_a_shared_cube_does_not_copy_private_text(mem):
    mem.create_cube("team/shared")
    mem.grant("team/shared", BOB, "read")
    mem.create_cube("agent/alice/private")
    private = mem.write("agent/alice/private", "Alice's PIN is 2468.")
    shared = mem.write("team/shared", "The team meets on Tuesdays.")
    adapter = mem.distill([private.id, shared.id], "team/shared")
    seen = mem.as_principal(BOB).read(adapter.id)
    assert "2468" not in seen.content and "2468" not in str(seen.metadata)
    assert "Tuesdays" in seen.content  # what the shared cube already holds is still searchable
    assert "2468" not in " ".join(h.memory.content for h in mem.as_principal(BOB).search("PIN", ["team/shared"]))
    with pytest.raises(MemosError):  # bob cannot distil alice's private text into the shared cube
        mem.as_principal(BOB).distill([private.id], "team/shared")


# ------------------------------------------------------------------------------------------------ incarnations, stats


def test_a_recreated_cube_name_does_not_inherit_the_dropped_cubes_audit_and_events(mem):
    info = mem.create_cube("team/x")
    mem.write("team/x", "alice was here")
    mem.drop_cube("team/x")
    bob = mem.as_principal(BOB)
    again = bob.create_cube("team/x")
    assert again.incarnation != info.incarnation
    assert [(r.principal, r.op) for r in bob.audit("team/x")] == [(BOB, "create_cube")]
    assert {r.incarnation for r in bob.audit("team/x")} == {again.incarnation}
    assert [(e.type, e.principal) for e in bob.events(cubes=["team/x"]).events] == [("cube_created", BOB)]
    assert [e.type for e in bob.events().events] == ["cube_created"]
    everything = mem.as_principal("system").audit()  # the superuser still sees the dropped incarnation's records
    assert {r.incarnation for r in everything if r.cube == "team/x"} == {info.incarnation, again.incarnation}


def test_stats_show_a_principal_only_the_cubes_it_can_read(mem):
    mem.create_cube("team/alice")
    for i in range(3):
        mem.write("team/alice", f"note {i}")
    mem.search("note", ["team/alice"])
    bob = mem.as_principal(BOB)
    bob.create_cube("team/bob")
    bob.write("team/bob", "bob's note")
    stats = bob.stats()
    assert stats.syscalls == {"create_cube": 1, "write": 1}  # his cube's calls, not alice's
    assert "search" not in stats.latency_ms
    whole = mem.as_principal("system").stats()
    assert whole.syscalls["write"] == 4 and whole.syscalls["search"] == 1


def test_a_distillation_waits_while_the_model_host_trains_for_another_kernel(mem, kernel, model_port, monkeypatch):
    """Kernels that share one model host each queue their own jobs; the host refuses a second training
    (CapacityExceeded) and the kernel waits for it instead of failing its caller."""
    mem.create_cube("team/a")
    ids = [mem.write("team/a", "a fact").id]
    busy = {"left": 3}
    real = model_port.start_distill

    def busy_then_free(facts, path, config):
        if busy["left"]:
            busy["left"] -= 1
            raise CapacityExceeded("1 distillation(s) running; at most 1 at once")
        return real(facts, path, config)

    monkeypatch.setattr(model_port, "start_distill", busy_then_free)
    assert mem.distill(ids, "team/a").kind == Kind.PARAMETRIC and busy["left"] == 0
