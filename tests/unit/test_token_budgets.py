"""Token budgets of assemble_context and generate: a default from the model's context, every memory's tokens
counted whatever its kind (so migrating changes latency, not which memories a prompt gets nor their order), and a
warning when a memory named with ``memory=[id]`` does not fit."""

from __future__ import annotations

import pytest
from fakes import FakeModelPort

from memos.models.port import Generation


class GeneratingFake(FakeModelPort):
    """The fake host, able to 'generate': it records what it was given (kv memory ids, texts) and echoes it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict] = []

    def generate(self, messages, *, kv, texts, max_new_tokens, adapter=None) -> Generation:
        self.requests.append({"kv": [b.memory_id for b in kv], "texts": list(texts)})
        return Generation(text=" | ".join(texts), finish_reason="stop", prompt_tokens=10, cached_tokens=0,
                          ttft_s=0.01, total_s=0.02)


@pytest.fixture
def model_port():
    return GeneratingFake()


def words(n: int, topic: str) -> str:
    return " ".join([topic] * n)


@pytest.fixture
def three(mem):
    """Three memories of 20, 30 and 40 words (the fake counts words + 4 tokens each)."""
    mem.create_cube("team/x")
    return [mem.write("team/x", words(n, t)) for n, t in ((20, "alpha"), (30, "beta"), (40, "gamma"))]


def used(plan):
    return [(i.memory_id, i.use) for i in plan.items if i.use != "skip"]


def test_the_default_budget_is_half_the_models_context(mem, three, model_port):
    assert mem.assemble_context("alpha", "team/x").token_budget == model_port.context_tokens // 2
    model_port.context_tokens = 64
    plan = mem.generate("alpha?", memory=[m.id for m in three]).plan
    assert plan.token_budget == 32
    assert used(plan) == [(three[0].id, "text")]  # 24 tokens fit in 32; 34 and 44 do not


def test_a_named_memory_that_does_not_fit_is_a_warning_in_the_result_and_the_log(mem, three):
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        result = mem.generate("what do we know?", memory=[three[0].id, three[2].id], token_budget=40)
    assert used(result.plan) == [(three[0].id, "text")]
    (warning,) = result.plan.warnings
    assert three[2].id in warning and "44 tokens" in warning and "token_budget" in warning
    assert [(e["event"], e["memory_id"], e["log_level"]) for e in logs if e["event"] == "named_memory_skipped"] == [
        ("named_memory_skipped", three[2].id, "warning")]
    chosen = mem.generate("alpha beta gamma", cubes="team/x", token_budget=40)
    assert chosen.plan.warnings == ()  # memory chosen by search may be left out: that is what the budget is for


def test_migrating_changes_neither_the_memories_nor_their_order(mem, three, model_port):
    ids = [m.id for m in three]
    before = mem.generate("what do we know?", memory=ids, token_budget=60)
    assert used(before.plan) == [(ids[0], "text"), (ids[1], "text")]  # 24 + 34 tokens; 44 more do not fit

    mem.migrate(ids[1], "activation")  # the second one only: its cache cannot be a prefix after the first's text
    second = mem.generate("what do we know?", memory=ids, token_budget=60)
    assert used(second.plan) == [(ids[0], "text"), (ids[1], "text")]
    assert "not at the front" in second.plan.items[1].reason

    mem.migrate(ids[0], "activation")  # now both lead: both are injected as caches, in the same order
    third = mem.generate("what do we know?", memory=ids, token_budget=60)
    assert used(third.plan) == [(ids[0], "kv"), (ids[1], "kv")]
    assert third.plan.items[2].use == "skip"  # cached tokens count against the budget too
    assert [r["kv"] for r in model_port.requests] == [[], [], [ids[0], ids[1]]]
    assert [len(r["texts"]) for r in model_port.requests] == [2, 2, 0]


def test_without_a_model_the_budget_is_an_estimate_of_512(tmp_path, clock):
    from fakes import HashingEmbedder

    from memos.client import Memos
    from memos.kernel import Kernel
    from memos.service import KernelService
    from memos.storage.sqlite import SqliteStore
    from memos.storage.vector import InMemoryVectorIndex
    from memos.transports import InProcessTransport

    kernel = Kernel(SqliteStore(tmp_path / "m.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(), HashingEmbedder(),
                    clock=clock)
    mem = Memos(InProcessTransport(KernelService(kernel)), "agent:alice")
    mem.create_cube("team/x")
    mem.write("team/x", "a fact")
    plan = mem.assemble_context("fact", "team/x")
    assert plan.token_budget == 512 and plan.estimated
    kernel.close()
