"""The embedded model host is attached lazily, and converted models live in one cache per machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import FakeModelPort

from memos.config import Settings, default_model_cache
from memos.errors import ModelUnavailable
from memos.models import service as model_service
from memos.models.service import LazyModelService


@pytest.fixture
def opened(monkeypatch):
    """Record each time the real model service would be opened; hand out a fake instead."""
    calls: list[Settings] = []

    def fake_open(settings, **_):
        calls.append(settings)
        return FakeModelPort()

    monkeypatch.setattr(model_service, "open_model_service", fake_open)
    return calls


def test_the_model_is_opened_by_the_first_call_that_needs_it_and_only_once(tmp_path, opened):
    lazy = LazyModelService(Settings(home=tmp_path))
    lazy.forget(["nothing-loaded-yet"])
    assert lazy.usage_counts()["payloads"] == 0
    assert not lazy.loaded and opened == []
    lazy.fingerprint()
    lazy.count_tokens(["a memory"])
    assert lazy.loaded and len(opened) == 1


def test_a_model_that_cannot_load_fails_the_call_that_needed_it_and_is_tried_again(tmp_path, monkeypatch):
    attempts = []

    def broken(settings, **_):
        attempts.append(1)
        raise ModelUnavailable("no weights")

    monkeypatch.setattr(model_service, "open_model_service", broken)
    lazy = LazyModelService(Settings(home=tmp_path))
    for _ in range(2):
        with pytest.raises(ModelUnavailable, match="no weights"):
            lazy.fingerprint()
    assert len(attempts) == 2 and not lazy.loaded


def test_converted_models_are_cached_per_machine_not_per_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMOS_MODEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_model_cache() == tmp_path / "xdg" / "memos" / "models"
    assert Settings(home=tmp_path / "a").model_cache_dir == Settings(home=tmp_path / "b").model_cache_dir
    monkeypatch.setenv("MEMOS_MODEL_CACHE", str(tmp_path / "shared"))
    assert Settings(home=tmp_path / "a").model_cache_dir == Path(tmp_path / "shared")


def test_the_lazy_port_has_every_method_of_the_model_port():
    from memos.models.port import ModelPort

    wanted = {name for name in vars(ModelPort) if not name.startswith("_")}
    assert wanted <= {name for name in vars(LazyModelService) if not name.startswith("_")}


def test_the_lazy_port_passes_every_argument_through(tmp_path, opened):
    lazy = LazyModelService(Settings(home=tmp_path))
    built = lazy.build_activation("a memory to cache", str(tmp_path / "kv"), {"select": "snapkv"})
    assert built.kept_tokens < built.tokens and lazy.context_length() == 2048


def test_without_a_model_host_the_error_says_how_the_kernel_was_opened(mem):
    mem.create_cube("team/x")
    m = mem.write("team/x", "a fact")
    with pytest.raises(ModelUnavailable) as refused:
        mem.migrate(m.id, "activation")
    assert "Settings(model=None) or MEMOS_MODEL=none" in str(refused.value)
    assert "Settings(model='smollm2')" not in str(refused.value)  # that is the default: it cannot be the fix
