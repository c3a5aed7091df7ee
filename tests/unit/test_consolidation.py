"""Consolidation: ``compress`` writes a summary derived from its sources at exact versions, by itself and under a
policy (explained by ``memos policy explain``'s planner first)."""

from __future__ import annotations

import textwrap

import pytest

from memos.errors import InvalidState, VersionConflict
from memos.kernel.ops.consolidate import cut_to_bytes
from memos.schedulers.explain import describe
from memos.schedulers.loader import load_policy
from memos.schedulers.runner import PolicyRunner
from memos.types import State

NOTES = (
    "The team met on Monday to plan the battery study. Sodium-ion cells cost about 30% less per kWh than LFP. "
    "Lunch was pizza. The sodium-ion cells lose capacity faster in the cold. Ana will order sodium-ion samples."
)


def test_compress_summarises_into_a_derived_memory_and_archives_the_sources(mem):
    mem.create_cube("team/x")
    a = mem.write("team/x", NOTES, tags=["meeting"])
    b = mem.write("team/x", "Sodium-ion samples arrive in June. The cells cost less per kWh.", trust="untrusted")
    summary = mem.compress([a.id, b.id], max_bytes=200)
    assert len(summary.content.encode()) <= 200 and "Sodium-ion" in summary.content and "pizza" not in summary.content
    assert [(r.id, r.version) for r in summary.provenance.derived_from] == [(a.id, 1), (b.id, 1)]
    assert summary.provenance.source == "derived" and summary.provenance.operation == "compress:rules"
    assert summary.provenance.trust == "untrusted" and summary.tags == ("meeting",)
    for source in (a, b):
        retired = mem.read(source.id)
        assert retired.state == State.ARCHIVED and retired.provenance.operation == "compress:retired"
        assert retired.provenance.source_refs == (summary.id,)
    kept = mem.write("team/x", NOTES)
    mem.compress(kept.id, max_bytes=100, keep_sources=True)
    assert mem.read(kept.id).state == State.ACTIVE


def test_compress_refuses_stale_versions_and_inactive_sources(mem):
    mem.create_cube("team/x")
    m = mem.write("team/x", NOTES)
    mem.update(m.id, content=NOTES + " Updated.")
    with pytest.raises(VersionConflict):
        mem.compress(m.id, expected_versions=[1])
    mem.archive(m.id)
    with pytest.raises(InvalidState):
        mem.compress(m.id)


def test_cut_to_bytes_keeps_whole_words_and_utf8():
    assert cut_to_bytes("short", 10) == "short"
    cut = cut_to_bytes("héllo wörld again and again", 14)
    assert len(cut.encode()) <= 14 and cut.endswith("…") and cut.startswith("héllo")


def test_a_compress_policy_executes_under_its_rule(mem, kernel, clock, tmp_path):
    path = tmp_path / "compress.yaml"
    path.write_text(textwrap.dedent("""
        name: tidy
        applies_to: {cubes: ["team/*"]}
        schedule: {every: 1h}
        rules:
          - name: compress-long
            when: {kind: plaintext}
            then: {compress: {max_bytes: 160B}}
    """))
    policy = load_policy(path)
    runner = PolicyRunner(kernel.execute, [policy], clock=clock.now)
    mem.create_cube("team/x")
    long = mem.write("team/x", NOTES)
    short = mem.write("team/x", "Ana orders samples.")
    plan = runner.plan("tidy")
    assert [describe(a) for a in plan.actions] == [
        f"compress {long.id} v1 into a summary of <= 160B (source archived) in team/x"]
    report = runner.run_once("tidy")
    assert [(o.rule, o.outcome, o.memories) for o in report.outcomes] == [("tidy/compress-long", "ok", (long.id,))]
    assert mem.read(long.id).state == State.ARCHIVED and mem.read(short.id).state == State.ACTIVE
    (summary,) = [m for m in mem.list("team/x") if m.id not in (long.id, short.id)]
    assert len(summary.content.encode()) <= 160
    assert summary.provenance.policy_rule == "tidy/compress-long" and summary.provenance.author == "system"
    assert [(r.id, r.version) for r in summary.provenance.derived_from] == [(long.id, 1)]
    assert runner.run_once("tidy").outcomes == ()  # the summary is within max_bytes: nothing more to do


def test_group_by_meaning_builds_star_groups():
    from memos.kernel.ops.consolidate import group_by_meaning

    a, a2, b, ab = [1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.7, 0.7]
    assert group_by_meaning([a, a2, b, ab], 0.95, 16) == [[0, 1]]
    assert group_by_meaning([ab, a, b], 0.7, 16) == [[0, 1, 2]]
    assert group_by_meaning([ab, a, b], 0.7, 2) == [[0, 1]]


class _ByTopic:
    """An embedder for which texts mean the same when they share their first word."""

    name = "by-topic"
    dimension = 8

    def embed(self, texts):
        topics = {"budget": 0, "lunch": 1}
        return [[1.0 if i == topics.get(t.split()[0].lower(), 2) else 0.0 for i in range(8)] for t in texts]


def test_merge_fuses_what_means_the_same_under_a_policy(mem, kernel, clock, tmp_path):
    kernel.embedder = _ByTopic()
    mem.create_cube("team/x")
    a = mem.write("team/x", "Budget for the cells is 40k this year.")
    b = mem.write("team/x", "Budget approved: forty thousand for battery cells.")
    c = mem.write("team/x", "Lunch is at noon on Fridays.")
    merged = mem.merge([a.id, b.id, c.id], similarity=0.9)
    (m,) = merged
    assert [(r.id, r.version) for r in m.provenance.derived_from] == [(a.id, 1), (b.id, 1)]
    assert m.provenance.operation == "merge:rules" and m.metadata["merged"] == 2
    assert {mem.read(a.id).state, mem.read(b.id).state, mem.read(c.id).state} == {State.ARCHIVED, State.ACTIVE}
    assert mem.read(c.id).state == State.ACTIVE

    path = tmp_path / "merge.yaml"
    path.write_text(textwrap.dedent("""
        name: tidy
        applies_to: {cubes: ["team/*"]}
        schedule: {every: 1h}
        rules:
          - name: merge-same
            when: {kind: plaintext}
            then: {fuse: {by: meaning, similarity: 0.9}}
    """))
    d = mem.write("team/x", "Lunch moved to 1pm on Fridays.")
    runner = PolicyRunner(kernel.execute, [load_policy(path)], clock=clock.now)
    (action,) = runner.plan("tidy").actions
    assert describe(action).startswith("merge those of 3 memories that mean the same (cosine >= 0.9")
    report = runner.run_once("tidy")
    assert [(o.rule, o.outcome) for o in report.outcomes] == [("tidy/merge-same", "ok")]
    assert mem.read(c.id).state == State.ARCHIVED and mem.read(d.id).state == State.ARCHIVED
    lunch = [x for x in mem.list("team/x") if x.provenance.operation == "merge:rules" and x.metadata["merged"] == 2
             and {r.id for r in x.provenance.derived_from} == {c.id, d.id}]
    assert lunch and lunch[0].provenance.policy_rule == "tidy/merge-same"
