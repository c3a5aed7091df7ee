"""Every example workflow runs end to end (the main job of the README among them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESEARCHERS = {"agent:researcher-a", "agent:researcher-b"}
AGENTS = {"agent:planner", "agent:writer", *RESEARCHERS}


def assert_report_tells_the_story(report) -> None:
    """What `memos run` prints: the agents, who recalled whom, the correction, the refusal, the migration with its
    TTFT, the answers (rendered by rich, as on a terminal without colours)."""
    from rich.console import Console

    console = Console(record=True, width=160, color_system=None)
    console.print(report)
    text = console.export_text()
    for expected in ("agent:researcher-a", "Who recalled whose memory", "The correction", "Refused",
                     "Migration to activation memory", "TTFT as KV cache", "The writer's answers", "memories by kind"):
        assert expected in text, expected
    assert "denied" in text and "175" in text
    assert not text.lstrip().startswith("{")  # a story, not a JSON dump


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_research_team_workflow(ray_runtime):
    module = load("research_team")
    summary = module.run(ray_runtime)
    assert_report_tells_the_story(module.report(summary))
    thread, team = summary["thread"], summary["team_cube"]
    assert summary["rounds"] == 2

    # One agent's findings are recalled by another: each researcher by the other, both by the writer.
    across = {(by, author) for by, author, _ in summary["recalled_across_agents"]}
    assert {("agent:researcher-a", "agent:researcher-b"), ("agent:researcher-b", "agent:researcher-a")} <= across
    assert {author for by, author in across if by == "agent:writer"} >= RESEARCHERS
    assert ("agent:planner", "agent:writer") in across

    versions = summary["corrected"]["versions"]
    assert [(v, author) for v, author, _ in versions] == [(1, "agent:researcher-b"), (2, "agent:writer")]
    assert "175" in versions[1][2]

    # The private note is refused through the tools, and researcher-a's audit log holds both attempts.
    assert [(d["tool"], d["status"], d["error"].split(":")[0]) for d in summary["denials"]] == [
        ("recall", "error", "denied"), ("memory_history", "error", "not_found")]
    assert summary["audited_denials"] == [
        "agent:writer cube_info on agent/researcher-a/notes: denied",  # recall checks each cube it names first
        "agent:writer history on agent/researcher-a/notes: denied",
    ]

    assert [(v, author, ref) for v, author, ref in summary["plan_versions"]] == [
        (1, "agent:planner", f"thread/{thread}"), (2, "agent:planner", f"thread/{thread}")]

    # The most-read finding is promoted to activation memory and reaches the model as a KV cache in round 2.
    (migration,) = summary["migrations"]
    assert migration["kind"] == "activation" and migration["reads"] >= 1
    # Measured on the same question and memory: as text it is prefilled, as a KV cache it is not.
    assert migration["cached_tokens"] > 0 and migration["same_first_token"]
    assert migration["prompt_tokens"]["as_kv_cache"] >= migration["prompt_tokens"]["as_text"] - 1
    assert migration["ttft_s"]["as_text"] > 0 and migration["ttft_s"]["as_kv_cache"] > 0
    assert summary["memories_by_kind"]["activation"] == {"active": 1}
    assert summary["memories_by_kind"]["plaintext"]["active"] >= 9
    first, second = summary["generations"]
    assert first["memory"]["text"] >= 1 and first["prompt_tokens"] > 0 and first["ttft_s"] > 0
    assert second["memory"]["kv"] == 1 and second["cached_tokens"] > 0

    # The team cube's history shows who wrote what.
    history = summary["team_cube_history"]
    assert sum("write by agent:researcher-a" in line for line in history) == 4
    assert sum("write by agent:researcher-b" in line for line in history) == 4
    assert any("update by agent:writer" in line for line in history)
    assert any("migrate:activation by agent:planner" in line for line in history)
    assert summary["latency_ms"]["syscalls"] > 50 and len(summary["latency_ms"]["generate"]) == 4

    # Every memory an agent wrote or changed names the agent and the thread (and the message, for tools and
    # the memory-aware graph); the kernel's migrate takes no references, so only its author is checked.
    system = ray_runtime.client("system")
    changes = 0
    for cube in (team, f"{team}/plan", "agent/researcher-a/notes", "agent/researcher-b/notes"):
        for memory in system.list(cube, limit=1000):
            if cube.startswith("agent/") and memory.metadata.get("thread") != thread:
                continue  # private notes of earlier runs
            for version in system.history(memory.id):
                prov = version.provenance
                assert prov.author in AGENTS, (cube, prov)
                if prov.operation.startswith("migrate"):
                    continue
                changes += 1
                assert prov.source_refs and all(r.startswith(f"thread/{thread}") for r in prov.source_refs), prov
                assert cube.endswith("/plan") or all(r.startswith(f"thread/{thread}/msg/") for r in prov.source_refs)
    assert changes >= 15


def test_agents_quickstart_two_agents_each_with_its_own_store(tmp_path):
    from memos.config import Settings
    from memos.runtime import Runtime

    with Runtime.start(Settings(home=tmp_path / "home", model=None), mode="inprocess") as runtime:
        quickstart = load("agents_quickstart")
        first = quickstart.run(runtime)
        again = quickstart.run(runtime)  # runs again on the same data dir as is

    # bob's tool call recalls alice's finding, with alice as its author and the tool call as its message.
    content, author, refs = first["bob_recalled"][0]
    assert (content, author) == ("The sodium-ion pilot cells reached 160 Wh/kg", "agent:alice")
    assert refs[0].startswith("thread/quickstart-") and "/msg/call-" in refs[0]
    assert first["bob"].startswith("(recall)") and "160 Wh/kg" in first["bob"]
    # alice's store item is hers; bob's own store is refused it, naming the right he lacks.
    assert first["alice_last_question"] == {"text": "remember: The sodium-ion pilot cells reached 160 Wh/kg"}
    assert first["bob_reading_alices_notes"].startswith("denied:")
    assert "'read'" in first["bob_reading_alices_notes"]
    assert len(again["bob_recalled"]) == 2
