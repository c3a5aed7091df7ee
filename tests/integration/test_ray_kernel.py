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


def test_a_distillation_on_the_model_actor_shows_progress_and_is_cancelled(ray_runtime):
    """Kernel actor and model actor both threaded: while the model actor trains, the kernel answers ``jobs`` and
    ``search``; ``cancel`` reaches the training, nothing is committed and no adapter file is left."""
    import threading
    import time
    from pathlib import Path

    from memos.errors import Cancelled
    from memos.types import DistillRecipe

    alice = ray_runtime.client("agent:alice")
    alice.create_cube("team/distill", exist_ok=True)
    ids = [alice.write("team/distill", t).id for t in ("Quennet Arvalo keeps the tin whistle in Lodmire.",
                                                        "The population of Skarrow is 18,306.")]
    out: dict = {}

    def run():
        try:
            # No replay term: its reference outputs are computed before step 1, and only the steps matter here.
            out["result"] = alice.distill(ids, "team/distill", steps=500, recipes=[DistillRecipe(replay_weight=0.0)])
        except Exception as exc:  # noqa: BLE001 -- a worker thread hands its failure to the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 240
    while True:
        running = [j for j in alice.jobs(running_only=True) if j.op == "distill" and j.step >= 1]
        if running:
            break
        assert time.monotonic() < deadline and thread.is_alive(), out
        time.sleep(0.5)
    job = running[0]
    assert job.total == 500 and job.phase == "train" and job.loss is not None and job.memory_ids == tuple(ids)
    assert alice.search("tin whistle", "team/distill", k=1)[0].memory.id == ids[0]  # the kernel is not blocked
    alice.cancel(job.id)
    thread.join(120)
    assert isinstance(out.get("error"), Cancelled), out
    assert [m.kind.value for m in alice.list("team/distill")] == ["plaintext", "plaintext"]
    assert not list(Path(ray_runtime.settings.home).rglob(f"{job.target}*"))
    assert next(j for j in alice.jobs() if j.id == job.id).state == "cancelled"
