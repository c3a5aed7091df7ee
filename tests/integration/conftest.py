"""Integration fixtures: one private local Ray (127.0.0.1) per test session with the kernel actor on a temp data
dir, Chroma on disk and the bundled embedder. Everything started here is stopped here."""

from __future__ import annotations

import pytest

from memos.config import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ray_runtime(tmp_path_factory):
    from memos.runtime import Runtime

    home = tmp_path_factory.mktemp("memos-ray")
    settings = Settings(home=home, sqlite_synchronous="NORMAL", dashboard_port=28265, metrics_export_port=28081)
    runtime = Runtime.start(settings, mode="ray", dashboard=False)
    yield runtime
    runtime.close()
