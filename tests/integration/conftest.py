"""Integration fixtures: one private local Ray (127.0.0.1) per test session with the kernel and model actors on a
temp data dir, Chroma on disk, the bundled embedder and the bundled model. Everything started here is stopped here.

The converted model is cached across runs under pytest's temp root (or $MEMOS_MODEL_CACHE), so only the first run
pays the GGUF conversion."""

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


@pytest.fixture(scope="session")
def model_service(model_cache_dir):
    """The in-process model service (loads the model once per session; converts the GGUF on the first run)."""
    from memos.models.loader import ModelSpec
    from memos.models.service import ModelService

    return ModelService(ModelSpec(cache_dir=model_cache_dir))


def home_with_model_cache(home: Path, model_cache_dir: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(model_cache_dir, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def ray_runtime(tmp_path_factory, model_service, model_cache_dir):
    from memos.runtime import Runtime

    home = home_with_model_cache(tmp_path_factory.mktemp("memos-ray"), model_cache_dir)
    settings = Settings(home=home, sqlite_synchronous="NORMAL", dashboard_port=28265, metrics_export_port=28081)
    runtime = Runtime.start(settings, mode="ray", dashboard=False)
    yield runtime
    runtime.close()
