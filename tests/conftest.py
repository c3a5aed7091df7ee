"""Shared fixtures. Unit tests use the kernel with an in-memory index and a hashing embedder (no model, no Ray)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
sys.path.insert(0, str(Path(__file__).parent))

from fakes import HashingEmbedder  # noqa: E402

from memos.clock import ManualClock  # noqa: E402
from memos.kernel import Kernel  # noqa: E402
from memos.models.llm_rules import RuleBasedLanguageModel  # noqa: E402
from memos.storage.sqlite import SqliteStore  # noqa: E402
from memos.storage.vector import InMemoryVectorIndex  # noqa: E402


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_750_000_000.0)


@pytest.fixture
def model_port():
    """The kernel's model host: none by default. A module that needs one overrides this fixture (e.g. with
    ``fakes.FakeModelPort()``), and ``kernel`` uses it."""
    return None


@pytest.fixture
def kernel(tmp_path: Path, clock: ManualClock, model_port) -> Kernel:
    k = Kernel(SqliteStore(tmp_path / "memos.sqlite3", synchronous="NORMAL"), InMemoryVectorIndex(), HashingEmbedder(),
               clock=clock, model=model_port, llm=RuleBasedLanguageModel())
    k.job_poll_s = 0.01  # a test's model host is scripted and answers at once: poll it often
    yield k
    k.close()
