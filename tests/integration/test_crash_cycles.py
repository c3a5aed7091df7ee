"""Crash recovery under a mixed workload: the kernel's process is SIGKILLed at random points, several times, and
every restart finds every acknowledged change intact, no half versions, the vector index reconciled and no orphan
blobs (``memos.bench.soak``; ``memos bench soak`` runs many more cycles)."""

from __future__ import annotations

import pytest

from memos.bench.soak import run_crash_soak

pytestmark = pytest.mark.integration


def test_sigkill_at_random_points_loses_nothing_acknowledged_and_leaves_nothing_half_done(tmp_path):
    result = run_crash_soak(3, home=tmp_path / "home", out_dir=tmp_path / "out", seed=8, kill_after_s=(0.3, 1.2))
    totals = result["totals"]
    assert result["acknowledged"].get("write", 0) > 0
    assert result["acknowledged_writes_lost"] == 0 and result["acknowledged_changes_lost"] == 0
    assert totals["purged_left"] == 0 and totals["half_versions"] == 0 and totals["integrity_failures"] == 0
    assert totals["index_missing"] == totals["index_extra"] == totals["index_outdated"] == 0
    assert totals["doctor_added"] == totals["doctor_removed"] == 0
    assert totals["dense_checked"] > 0 and totals["dense_misses"] == 0
    assert totals["orphan_blobs"] == 0 and totals["child_errors"] == 0
    assert [c["exit"] for c in result["cycles"]] == ["killed", "killed", "killed", 0]
    assert (tmp_path / "out" / "soak.json").exists() and "acknowledged writes lost: 0" in (tmp_path / "out" / "soak.md").read_text()
