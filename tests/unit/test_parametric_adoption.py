"""Evaluation gates adoption: a distillation whose evaluation misses the gate is stored but not adopted (visible,
with the reasons, and never chosen by ``assemble_context``); recipes are tried in order until one is adopted; a
policy's gate and recipes reach the kernel. The model host is the scripted FakeModelPort (a recipe listed in its
``weak_recipes`` reports recall 0.2); the real model's side is tests/integration/test_parametric_gating.py."""

from __future__ import annotations

import pytest
from fakes import FakeModelPort

from memos.schedulers.engine import compile_policy
from memos.schedulers.loader import parse_spec
from memos.schedulers.runner import PolicyRunner
from memos.types import AdoptionGate, DistillRecipe, Kind

WEAK = {"steps": 1}


@pytest.fixture
def model_port() -> FakeModelPort:
    port = FakeModelPort()
    port.weak_recipes = (WEAK,)
    return port


def facts(mem) -> list[str]:
    mem.create_cube("team/facts")
    return [mem.write("team/facts", t).id for t in ("Mara keeps the brass key in Trumwick.", "The vault code is 4417.")]


def test_the_gate_names_every_threshold_an_evaluation_misses() -> None:
    gate = AdoptionGate(min_recall=0.9, min_held_out_recall=0.5, max_locality_delta=0.1)
    good = {"recall_with": 1.0, "held_out_recall_with": 0.8, "locality_delta": -0.02}
    assert gate.misses(good) == ()
    assert gate.misses({**good, "held_out_recall_with": None}) == ()  # no held-out questions: not checked
    bad = {"recall_with": 0.5, "held_out_recall_with": 0.25, "locality_delta": 0.3}
    assert gate.misses(bad) == (
        "recall 50% is below 90%", "held-out recall 25% is below 50%", "locality delta +0.300 nats is above +0.100",
    )
    assert gate.misses({}) == ("recall unknown is below 90%", "locality delta unknown nats is above +0.100")


def test_a_bad_recipe_is_stored_but_not_adopted_and_never_chosen_for_a_prompt(mem, model_port) -> None:
    ids = facts(mem)
    adapter = mem.distill(ids, "team/facts", recipes=[DistillRecipe(steps=1)])
    assert adapter.kind == Kind.PARAMETRIC and adapter.payload is not None  # stored, with its file
    adoption = adapter.metadata["adoption"]
    assert adoption["adopted"] is False
    assert adoption["reasons"] == ["recall 20% is below 90%", "held-out recall 20% is below 60%"]
    assert [a["recipe"] for a in adoption["attempts"]] == [WEAK]
    event = mem.events(types=["distilled"]).events[-1]
    assert event.data["adopted"] is False and event.data["reasons"] == adoption["reasons"]
    plan = mem.assemble_context("Where does Mara keep the brass key?", "team/facts")
    assert plan.adapter is None
    item = next(i for i in plan.items if i.memory_id == adapter.id)
    assert item.use == "skip" and "not adopted: recall 20% is below 90%" in item.reason


def test_recipes_are_tried_in_order_until_one_is_adopted(mem, model_port) -> None:
    ids = facts(mem)
    adapter = mem.distill(ids, "team/facts", recipes=[DistillRecipe(steps=1), DistillRecipe(dtype="bfloat16")])
    assert model_port.distill_configs == [WEAK, {"dtype": "bfloat16"}]
    adoption = adapter.metadata["adoption"]
    assert adoption["adopted"] is True and adoption["reasons"] == []
    assert [(a["recipe"], bool(a["reasons"])) for a in adoption["attempts"]] == [(WEAK, True), ({"dtype": "bfloat16"}, False)]
    plan = mem.assemble_context("Where does Mara keep the brass key?", "team/facts")
    assert plan.adapter == adapter.id


def test_a_stricter_gate_turns_the_same_evaluation_down(mem) -> None:
    ids = facts(mem)
    adapter = mem.distill(ids, "team/facts", gate=AdoptionGate(max_locality_delta=0.0))
    assert adapter.metadata["adoption"]["adopted"] is False
    assert adapter.metadata["adoption"]["reasons"] == ["locality delta +0.010 nats is above +0.000"]


def test_a_policy_retries_a_distillation_with_its_next_recipe(mem, kernel, clock, model_port) -> None:
    facts(mem)
    mem.write("team/facts", "A third stable fact about Pelmark.")
    text = (
        "name: knowledge\n"
        "applies_to: {cubes: [team/*]}\n"
        "rules:\n"
        "  - name: distill-stable\n"
        "    when: {kind: plaintext}\n"
        "    then: {distill: {min_group: 3, gate: {min_recall: 0.95}, recipes: [{steps: 1}, {epochs: 20}]}}\n"
    )
    runner = PolicyRunner(kernel.execute, [compile_policy(parse_spec(text, "k.yaml"), source="k.yaml")], clock=clock.now)
    assert [o.outcome for o in runner.run_once("knowledge").outcomes] == ["ok"]
    assert model_port.distill_configs == [WEAK, {"epochs": 20}]
    adapter = next(m for m in mem.list("team/facts") if m.kind == Kind.PARAMETRIC)
    assert adapter.metadata["adoption"]["adopted"] is True
    assert adapter.metadata["adoption"]["gate"]["min_recall"] == 0.95


def test_an_adopted_adapter_stands_in_for_its_sources_in_the_prompt(mem, model_port) -> None:
    ids = facts(mem)
    other = mem.write("team/facts", "Mara keeps a spare brass key in the shed.").id
    adapter = mem.distill(ids, "team/facts")
    plan = mem.assemble_context("Where does Mara keep the brass key?", "team/facts", token_budget=4096)
    assert plan.adapter == adapter.id
    uses = {i.memory_id: i for i in plan.items}
    assert set(plan.covered) == set(ids) and all(uses[i].use == "covered" for i in ids)
    assert plan.saved_tokens == sum(uses[i].tokens for i in ids) > 0
    assert uses[other].use == "text"  # not a source: injected as before
    assert plan.text_tokens == uses[other].tokens
    # A source edited since training makes the adapter stale: the sources are injected again.
    mem.update(ids[0], content="Mara keeps the brass key in Vellport.")
    plan = mem.assemble_context("Where does Mara keep the brass key?", "team/facts", token_budget=4096)
    assert plan.adapter is None and plan.covered == () and plan.saved_tokens == 0


def test_a_source_the_evaluation_marked_weak_is_injected_as_text(mem, model_port) -> None:
    ids = facts(mem)
    adapter = mem.distill(ids, "team/facts", gate=AdoptionGate(min_recall=0.1, min_held_out_recall=0.1))
    assert adapter.metadata["adoption"]["adopted"] is True
    assert adapter.metadata["adoption"]["weak_sources"] == []
    model_port.weak_recipes = ({},)  # the default recipe now reports recall 0.2 and every source weak
    weak = mem.distill(ids, "team/facts", gate=AdoptionGate(min_recall=0.1, min_held_out_recall=0.1))
    assert weak.metadata["adoption"]["adopted"] is True and weak.metadata["adoption"]["weak_sources"] == ids
    mem.delete(adapter.id)
    plan = mem.assemble_context("Where does Mara keep the brass key?", "team/facts", token_budget=4096)
    assert plan.adapter == weak.id and plan.covered == ()
    assert {i.memory_id: i.use for i in plan.items if i.memory_id in ids} == dict.fromkeys(ids, "text")


def test_activation_sources_are_distilled_from_their_context_plaintext_from_text(mem, model_port) -> None:
    ids = facts(mem)
    mem.distill(ids, "team/facts")
    assert "teacher" not in model_port.distill_configs[-1]  # plaintext: the host's default (text)
    for memory_id in ids:
        mem.migrate(memory_id, "activation")
    mem.distill(ids, "team/facts")
    assert model_port.distill_configs[-1]["teacher"] == "context"  # activation memories: their cache teaches
    mem.distill(ids, "team/facts", recipes=[DistillRecipe(teacher="text")])
    assert model_port.distill_configs[-1]["teacher"] == "text"  # a recipe that names a teacher wins
