"""With the real model: migrating memories to activation changes the latency of a prompt, not its answer, nor which
memories it holds, nor their order (every memory's tokens count against the budget; caches are only a prefix)."""

from __future__ import annotations

from test_activation_memory import FACT, QUESTION, client

OTHER = "The lighthouse lamp is lit at dusk by whoever holds the brass key."


def test_migrating_changes_latency_not_the_answer(tmp_path, model_service):
    mem = client(tmp_path, model_service)
    try:
        mem.create_cube("team/kv")
        a, b = mem.write("team/kv", FACT), mem.write("team/kv", OTHER)
        answers, plans = [], []
        for migrate in (None, b.id, a.id):  # none, the second (not a prefix: still text), then both (a prefix)
            if migrate:
                mem.migrate(migrate, "activation")
            result = mem.generate(QUESTION, memory=[a.id, b.id], max_new_tokens=16)
            answers.append(result.text)
            plans.append([(i.memory_id, i.use) for i in result.plan.items])
        assert answers[0] == answers[1] == answers[2]
        assert plans == [[(a.id, "text"), (b.id, "text")], [(a.id, "text"), (b.id, "text")],
                         [(a.id, "kv"), (b.id, "kv")]]
        assert result.cached_tokens > 0
        default = mem.assemble_context(QUESTION, "team/kv")
        assert default.token_budget == model_service.context_length() // 2 == 4096
    finally:
        mem.close()
