"""The model host's payload tiers (LRU by bytes) and device / dtype resolution, without a model or a GPU."""

from __future__ import annotations

import pytest
import torch

from memos.errors import ModelUnavailable
from memos.models.loader import resolve_device
from memos.models.service import Tier


def test_a_tier_evicts_the_least_recently_used_to_stay_in_budget() -> None:
    tier = Tier(budget_bytes=100)
    assert tier.put(("a", "1"), "A", 40) == [] and tier.put(("b", "2"), "B", 40) == []
    assert tier.get(("a", "1")) == "A"  # a is now the most recent
    assert tier.put(("c", "3"), "C", 40) == [("b", "2")]
    assert tier.bytes == 80 and set(tier) == {("a", "1"), ("c", "3")}
    assert tier.get(("b", "2")) is None


def test_a_tier_keeps_the_payload_just_put_even_above_its_budget() -> None:
    tier = Tier(budget_bytes=10)
    tier.put(("a", "1"), "A", 5)
    assert tier.put(("big", "2"), "BIG", 50) == [("a", "1")]
    assert list(tier) == [("big", "2")] and tier.bytes == 50


def test_putting_the_same_key_again_does_not_count_it_twice() -> None:
    tier = Tier(budget_bytes=100)
    tier.put(("a", "1"), "A", 30)
    tier.put(("a", "1"), "A2", 30)
    assert tier.bytes == 30 and tier.get(("a", "1")) == "A2"
    tier.drop([("a", "1"), ("missing", "0")])
    assert tier.bytes == 0 and len(tier) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only resolution")
def test_without_a_gpu_auto_means_the_cpu_in_float32() -> None:
    assert resolve_device("auto", "auto") == ("cpu", "float32")
    assert resolve_device("cpu", "bfloat16") == ("cpu", "bfloat16")
    with pytest.raises(ModelUnavailable, match="torch sees 0 CUDA devices"):
        resolve_device("cuda", "auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_with_a_gpu_auto_means_the_gpu_in_half_precision() -> None:
    device, dtype = resolve_device("auto", "auto")
    assert device == "cuda" and dtype in ("bfloat16", "float16")
    with pytest.raises(ModelUnavailable):
        resolve_device(f"cuda:{torch.cuda.device_count()}", "auto")


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ModelUnavailable, match="unknown device 'tpu'"):
        resolve_device("tpu", "auto")


@pytest.mark.parametrize("given, policy, spin", [
    ({}, "PASSIVE", "3000"),  # memos' defaults: sleep when idle, after a short spin (docs/parametric.md, fifth pass)
    ({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "0"}, "ACTIVE", "0"),  # what the environment says wins
])
def test_openmp_wait_settings_are_set_before_torch_loads_unless_given(given, policy, spin) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
    code = "import os, memos.models; print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [policy, spin]
