"""An adopted adapter meets a new base model: it is not used until re-evaluated, and the re-evaluation keeps it adopted
(re-stamped for the new base) or marks it not adopted, with the reason, and stale (so that it is retrained). Two
scripted model hosts (FakeModelPort) with two fingerprints stand for the old and the new base model; the kernel is
closed and opened again on the same data dir with the other one, as a restart with a new model would."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeModelPort, HashingEmbedder
from threads import wait_for

from memos import syscalls as sc
from memos.client import Memos
from memos.errors import FingerprintMismatch, InvalidState
from memos.kernel import Kernel
from memos.kernel.ops.reevaluate import adapters_for_another_base, reevaluate_adapters
from memos.models.llm_rules import RuleBasedLanguageModel
from memos.service import KernelService
from memos.storage.sqlite import SqliteStore
from memos.storage.vector import InMemoryVectorIndex
from memos.transports import InProcessTransport
from memos.types import AdoptionGate

TEXTS = ("Mara keeps the brass key in Trumwick.", "The vault code is 4417.")
ASK = "Where does Mara keep the brass key?"


@pytest.fixture
def home(tmp_path, clock):
    """Opens kernels on one data dir, each with the model host given; closes them all at the end."""
    opened: list[Kernel] = []

    def open_with(port: FakeModelPort) -> tuple[Kernel, Memos]:
        if opened:
            opened[-1].close()
        kernel = Kernel(SqliteStore(tmp_path / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(),
                        HashingEmbedder(), clock=clock, model=port, llm=RuleBasedLanguageModel())
        kernel.job_poll_s = 0.01  # the scripted host answers at once
        opened.append(kernel)
        return kernel, Memos(InProcessTransport(KernelService(kernel)), "agent:alice")

    yield open_with
    opened[-1].close()


@pytest.fixture
def adopted(home):
    """An adapter adopted on base model fake-a; then the kernel comes up again on fake-b."""
    _, mem = home(FakeModelPort(model_id="fake-a"))
    mem.create_cube("team/facts")
    ids = [mem.write("team/facts", t).id for t in TEXTS]
    adapter = mem.distill(ids, "team/facts")
    assert adapter.metadata["adoption"]["adopted"] is True and adapter.fingerprint.model_id == "fake-a"
    port = FakeModelPort(model_id="fake-b")
    kernel, mem = home(port)
    return kernel, mem, port, ids, adapter


def test_an_adapter_of_another_base_model_is_not_used_before_it_is_re_evaluated(adopted) -> None:
    kernel, mem, _, ids, adapter = adopted
    assert adapters_for_another_base(kernel) == [adapter.id]
    plan = mem.assemble_context(ASK, "team/facts", token_budget=4096)
    assert plan.adapter is None and plan.covered == ()
    assert "trained on another base model" in next(i.reason for i in plan.items if i.memory_id == adapter.id)
    with pytest.raises(FingerprintMismatch):
        mem.generate(ASK, adapter=adapter.id, max_new_tokens=2)


def test_a_re_evaluation_that_passes_keeps_the_adapter_adopted_re_stamped_for_the_new_base(adopted) -> None:
    kernel, mem, port, ids, adapter = adopted
    outcomes = reevaluate_adapters(kernel)
    again = outcomes[adapter.id]
    assert again.version == adapter.version + 1 and again.provenance.operation == "reevaluate"
    assert again.provenance.author == "system" and again.provenance.derived_from == adapter.provenance.derived_from
    assert again.fingerprint.model_id == "fake-b" and again.payload.path != adapter.payload.path
    assert Path(adapter.payload.path).is_file()  # the old base's adapter stays, for a rollback
    adoption = again.metadata["adoption"]
    assert adoption["adopted"] is True and adoption["reasons"] == []
    assert adoption["evaluated_on"]["model_id"] == "fake-b"
    assert adoption["reevaluated"]["from"]["model_id"] == "fake-a" and adoption["reevaluated"]["adopted"] is True
    assert again.metadata["distill"]["locality_delta"] == 0.02  # the new evaluation's
    assert [(f, old) for f, old, _ in port.reevaluations] == [
        ([{"id": i, "version": 1, "text": t} for i, t in zip(ids, TEXTS, strict=True)], adapter.payload.path)]
    assert not again.stale
    plan = mem.assemble_context(ASK, "team/facts", token_budget=4096)
    assert plan.adapter == adapter.id and set(plan.covered) == set(ids)
    [event] = mem.events(types=["reevaluated"]).events
    assert event.data["adopted"] is True and event.principal == "system"
    assert [(j.op, j.state, j.target) for j in kernel.jobs.all()] == [("reevaluate", "done", adapter.id)]
    assert reevaluate_adapters(kernel) == {}  # nothing left to re-evaluate: no loop
    with pytest.raises(InvalidState, match="evaluated on the loaded base model already"):
        mem.reevaluate(adapter.id)


def test_a_re_evaluation_that_misses_the_gate_marks_it_not_adopted_and_stale_and_a_retrain_adopts_it(adopted) -> None:
    kernel, mem, port, ids, adapter = adopted
    port.reevaluate_recall = 0.2
    again = mem.reevaluate(adapter.id)
    adoption = again.metadata["adoption"]
    assert adoption["adopted"] is False
    assert adoption["reasons"] == ["on base model fake-b (float32): recall 20% is below 90%",
                                   "on base model fake-b (float32): held-out recall 20% is below 60%"]
    assert again.stale and again.fingerprint.model_id == "fake-b"  # inspectable on the new base, not used
    plan = mem.assemble_context(ASK, "team/facts", token_budget=4096)
    assert plan.adapter is None
    assert adapters_for_another_base(kernel) == []  # not adopted: not re-evaluated again
    stale = [e for e in mem.events(types=["stale"]).events if e.memory_id == adapter.id]
    assert stale and stale[-1].data["base_model"] == "fake-b"
    # The way back: retrain from the sources on the new base (what a policy's distill rule does too).
    retrained = mem.distill(replaces=adapter.id)
    assert retrained.metadata["adoption"]["adopted"] is True and not retrained.stale
    assert mem.assemble_context(ASK, "team/facts", token_budget=4096).adapter == adapter.id


def test_an_adapter_that_cannot_be_applied_to_the_new_base_is_marked_not_adopted_and_nothing_is_written(
    adopted
) -> None:
    kernel, mem, port, _, adapter = adopted
    port.applicable = False  # another architecture: the adapted modules have other sizes
    again = reevaluate_adapters(kernel)[adapter.id]
    [reason] = again.metadata["adoption"]["reasons"]
    assert reason.startswith("cannot be applied on base model fake-b (float32): adapter ")
    assert "the adapter's update is (576, 576)" in reason
    assert again.payload == adapter.payload and again.fingerprint == adapter.fingerprint and again.stale
    [(_, _, new_path)] = port.reevaluations
    assert not Path(new_path).exists()
    assert [row[3] for row in kernel.store.migrations_of(adapter.id)][-1] == "rolled_back"


def test_a_not_adopted_adapter_is_not_re_evaluated_and_the_kernel_re_evaluates_when_it_comes_up(home, tmp_path) -> None:
    from memos.config import Settings
    from memos.kernel.factory import open_kernel

    _, mem = home(FakeModelPort(model_id="fake-a"))
    mem.create_cube("team/facts")
    ids = [mem.write("team/facts", t).id for t in TEXTS]
    adopted = mem.distill(ids, "team/facts")
    rejected = mem.distill(ids, "team/facts", gate=AdoptionGate(max_locality_delta=0.0))
    assert rejected.metadata["adoption"]["adopted"] is False
    home(FakeModelPort(model_id="fake-a"))  # closes the kernel; the next one is the product's own opener
    kernel = open_kernel(Settings(home=tmp_path, embedder="hashing", sqlite_synchronous="NORMAL"),
                         model=FakeModelPort(model_id="fake-b"))
    try:
        kernel.job_poll_s = 0.01
        row = wait_for(lambda: (r := kernel.store.get_version(adopted.id)).version == 2 and r)
        assert row.metadata["adoption"]["adopted"] is True and row.fingerprint["model_id"] == "fake-b"
        assert kernel.store.get_version(rejected.id).version == 1  # not adopted before: left as it was
        reevaluated = kernel.execute("system", sc.GetEvents(types=("reevaluated",))).events
        assert [e.memory_id for e in reevaluated] == [adopted.id]
    finally:
        kernel.close()


def test_a_policy_distils_the_sources_of_an_adapter_that_failed_its_re_evaluation_again(adopted, clock) -> None:
    from memos.schedulers.engine import compile_policy
    from memos.schedulers.loader import parse_spec
    from memos.schedulers.runner import PolicyRunner

    kernel, mem, port, ids, adapter = adopted
    text = (
        "name: knowledge\n"
        "applies_to: {cubes: [team/*]}\n"
        "rules:\n"
        "  - name: distill-stable\n"
        "    when: {kind: plaintext}\n"
        "    then: {distill: {min_group: 2, recipes: [{epochs: 20}]}}\n"
    )
    runner = PolicyRunner(kernel.execute, [compile_policy(parse_spec(text, "k.yaml"), source="k.yaml")], clock=clock.now)
    reevaluate_adapters(kernel)  # adopted on fake-b: its sources are distilled, the rule has nothing to do
    assert runner.run_once("knowledge").outcomes == ()
    port.reevaluate_recall = 0.2
    mem.rollback(adapter.id, to_version=1)  # back to the fake-a adapter, to re-evaluate it again
    assert mem.reevaluate(adapter.id).metadata["adoption"]["adopted"] is False
    assert [o.outcome for o in runner.run_once("knowledge").outcomes] == ["ok"]
    fresh = [m for m in mem.list("team/facts") if m.kind == "parametric" and m.id != adapter.id]
    assert len(fresh) == 1 and fresh[0].metadata["adoption"]["adopted"] is True
    assert {r.id for r in fresh[0].provenance.derived_from} == set(ids)


def test_a_pass_cut_by_the_kernel_closing_logs_at_info_not_error(adopted) -> None:
    """The background pass meets a closed store when the kernel closes under it: expected, not an error."""
    import threading

    kernel, _, _, _, adapter = adopted
    logged: list[tuple[str, str]] = []

    class Log:
        def __getattr__(self, level: str):
            return lambda message, **fields: logged.append((level, message))

    kernel.log, stop = Log(), threading.Event()
    kernel.store.close()
    stop.set()
    assert reevaluate_adapters(kernel, stop) == {}
    assert logged and all(level == "info" and "kernel closing" in message for level, message in logged)
    logged.clear()
    assert reevaluate_adapters(kernel) == {}  # not closing: the same failure is an error
    assert [level for level, _ in logged] == ["error"]
