"""Integration fixtures: one private local Ray (127.0.0.1) per test session with the kernel and model actors on a
temp data dir, Chroma on disk, the bundled embedder and the bundled model. Everything started here is stopped here.

The converted model is cached across runs under pytest's temp root (or $MEMOS_MODEL_CACHE), so only the first run
pays the GGUF conversion; the session exports that path as $MEMOS_MODEL_CACHE, so every ``Settings`` made by a test
(and every process a test starts) uses it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memos.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory) -> Path:
    path = Path(os.environ.get("MEMOS_MODEL_CACHE") or tmp_path_factory.getbasetemp().parent / "memos-model-cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session", autouse=True)
def shared_model_cache(model_cache_dir):
    """``Settings.model_cache`` defaults to $MEMOS_MODEL_CACHE: point it at the session's cache, never at ~/.cache."""
    before = os.environ.get("MEMOS_MODEL_CACHE")
    os.environ["MEMOS_MODEL_CACHE"] = str(model_cache_dir)
    yield model_cache_dir
    if before is None:
        os.environ.pop("MEMOS_MODEL_CACHE", None)
    else:
        os.environ["MEMOS_MODEL_CACHE"] = before


@pytest.fixture(scope="session")
def model_service(model_cache_dir):
    """The in-process model service (loads the model once per session; converts the GGUF on the first run)."""
    from memos.models.loader import ModelSpec
    from memos.models.service import ModelService

    return ModelService(ModelSpec(cache_dir=model_cache_dir))


def home_with_model_cache(home: Path, model_cache_dir: Path) -> Path:
    """A data dir whose settings use ``model_cache_dir`` (the machine-wide cache is not under the data dir)."""
    home.mkdir(parents=True, exist_ok=True)
    assert Settings(home=home).model_cache == model_cache_dir
    return home


@pytest.fixture(scope="session")
def base_model_before(model_service) -> dict:
    """The shared model before any distillation in this session: a digest of its weights and its greedy replies."""
    from parametric_facts import ASK, ASK_B, GENERAL, weights_digest

    host = model_service.host
    return {
        "digest": weights_digest(host.loaded.model),
        "replies": [host.generate(m, max_new_tokens=16).token_ids for m in (ASK, ASK_B, GENERAL)],
    }


@pytest.fixture(scope="session")
def team_adapters(tmp_path_factory, model_service, base_model_before):
    """Two teams, two agents, two adapters, trained once per session through the kernel with the default recipe:
    agent:alice distils FACTS_A in cube team/a, agent:bob distils FACTS_B in team/b (each cube private to its agent).
    The second fact of team a is at version 2 (an update before distillation). Most of the parametric tests' time."""
    from parametric_facts import FACTS_A, FACTS_B

    from memos.client import Memos
    from memos.kernel.factory import open_kernel
    from memos.service import KernelService
    from memos.transports import InProcessTransport

    home = tmp_path_factory.mktemp("parametric") / "home"
    kernel = open_kernel(Settings(home=home, sqlite_synchronous="NORMAL"), model=model_service)
    service = KernelService(kernel)
    alice = Memos(InProcessTransport(service), "agent:alice")
    bob = alice.as_principal("agent:bob")
    alice.create_cube("team/a")
    bob.create_cube("team/b")
    ids_a = [alice.write("team/a", f).id for f in FACTS_A]
    alice.update(ids_a[1], content=FACTS_A[1], tags=["census"])  # version 2: the header must name it
    ids_b = [bob.write("team/b", f).id for f in FACTS_B]
    adapter_a = alice.distill(ids_a, "team/a", tags=["adapter"])
    adapter_b = bob.distill(ids_b, "team/b", tags=["adapter"])
    for name, adapter in (("a", adapter_a), ("b", adapter_b)):
        e = adapter.metadata["distill"]
        print(f"\nadapter {name}: recall with {e['recall_with']:.0%} / without {e['recall_without']:.0%}; held-out "
              f"{e['held_out_recall_with']} / {e['held_out_recall_without']}; locality delta "
              f"{e['locality_delta']:+.4f} nats; {e['steps']} steps, train {e['train_s']:.0f} s; "
              f"{adapter.payload.size_bytes} bytes")
    yield {"alice": alice, "bob": bob, "ids_a": ids_a, "ids_b": ids_b, "a": adapter_a, "b": adapter_b,
           "kernel": kernel}
    service.close()


@pytest.fixture(scope="session")
def ray_runtime(tmp_path_factory, model_service, model_cache_dir):
    from memos.runtime import Runtime

    home = home_with_model_cache(tmp_path_factory.mktemp("memos-ray"), model_cache_dir)
    settings = Settings(home=home, sqlite_synchronous="NORMAL", dashboard_port=28265, metrics_export_port=28081)
    runtime = Runtime.start(settings, mode="ray", dashboard=False)
    yield runtime
    runtime.close()
