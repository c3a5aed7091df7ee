"""Every example workflow runs end to end (the main job of the README among them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_research_team_workflow(ray_runtime):
    summary = load("research_team").run(ray_runtime)
    authors = {a for a, _, _ in summary["recalled_by_writer"]}
    assert authors & {"agent:researcher-a", "agent:researcher-b"}
    versions = summary["corrected"]["versions"]
    assert [v[0] for v in versions] == [1, 2] and versions[1][1] == "agent:writer" and "175" in versions[1][2]
    assert len(summary["denials"]) == 2
    assert summary["memories_by_kind"]["plaintext"]["active"] >= 7
    assert any("v2 update by agent:writer" in line for line in summary["team_cube_history"])
    assert sum("by agent:researcher-a" in line for line in summary["team_cube_history"]) == 3
