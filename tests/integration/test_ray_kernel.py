"""The kernel as a Ray actor: the same client, typed errors across the actor boundary, Chroma on disk."""

from __future__ import annotations

import pytest

from memos.errors import NotFound, PermissionDenied, VersionConflict

pytestmark = pytest.mark.integration


def test_client_over_ray_writes_searches_and_keeps_history(ray_runtime):
    alice = ray_runtime.client("agent:alice")
    alice.create_cube("team/ray", exist_ok=True)
    m = alice.write("team/ray", "The Rhine flows through Basel and Cologne.", tags=["geo"])
    alice.update(m.id, content="The Rhine flows through Basel, Strasbourg and Cologne.", expected_version=1)
    hits = alice.search("Which river passes Strasbourg?", "team/ray", k=3)
    assert hits[0].memory.id == m.id and hits[0].memory.version == 2
    assert hits[0].dense_rank is not None  # found by meaning through Chroma, not only by words
    assert [v.version for v in alice.history(m.id)] == [1, 2]
    assert (ray_runtime.settings.home / "chroma").is_dir()


def test_typed_errors_cross_the_actor_boundary(ray_runtime):
    alice = ray_runtime.client("agent:alice")
    alice.create_cube("team/errors", exist_ok=True)
    m = alice.write("team/errors", "one")
    alice.update(m.id, content="two")
    with pytest.raises(VersionConflict) as err:
        alice.update(m.id, content="three", expected_version=1)
    assert err.value.details["current"] == 2
    with pytest.raises(PermissionDenied) as err:
        ray_runtime.client("agent:mallory").search("one", "team/errors")
    assert err.value.details == {"cube": "team/errors", "right": "read"}
    with pytest.raises(NotFound):
        ray_runtime.client("agent:mallory").read(m.id)
