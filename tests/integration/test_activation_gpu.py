"""The model host on a CUDA GPU: half precision, caches built and injected on the device, the GPU tier above RAM.
Skipped (not failed) on machines without a GPU, e.g. CI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memos.models.host import memory_messages
from memos.models.loader import ModelSpec
from memos.models.port import KVBlock
from memos.models.service import ModelService

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MEMORY = "Mara Quill keeps the brass key in the lighthouse.\nTomas Reyk keeps the red notebook in the cellar."
QUESTION = [{"role": "user", "content": "Where does Tomas Reyk keep the red notebook?"}]


@pytest.fixture(scope="module")
def gpu_service(model_cache_dir: Path) -> ModelService:
    return ModelService(ModelSpec(cache_dir=model_cache_dir, device="auto", dtype="auto"), gpu_budget_bytes=1 << 30)


def test_the_host_runs_on_the_gpu_in_half_precision(gpu_service: ModelService) -> None:
    host = gpu_service.host
    assert host.device == "cuda" and host.fingerprint.dtype in ("bfloat16", "float16")
    assert next(host.loaded.model.parameters()).device.type == "cuda"


def test_an_injected_cache_equals_a_prefill_on_the_gpu(gpu_service: ModelService, tmp_path: Path) -> None:
    host = gpu_service.host
    reference = host.generate(memory_messages([MEMORY]) + QUESTION, max_new_tokens=12)
    built = gpu_service.build_activation(MEMORY, str(tmp_path / "kv.safetensors"))
    block = KVBlock(memory_id="m_0123456789abcdef", payload=built.payload)
    first = gpu_service.generate(QUESTION, kv=[block], texts=[], max_new_tokens=12)
    again = gpu_service.generate(QUESTION, kv=[block], texts=[], max_new_tokens=12)
    assert first.text == reference.text == again.text
    assert first.kv_loaded_from_disk == ("m_0123456789abcdef",) and again.kv_loaded_from_disk == ()
    usage = gpu_service.ram_usage()
    assert usage["gpu_payloads"] == 1 and usage["gpu_bytes"] > 0 and usage["payloads"] == 1


def test_a_compressed_cache_works_on_the_gpu(gpu_service: ModelService, tmp_path: Path) -> None:
    built = gpu_service.build_activation(MEMORY, str(tmp_path / "kv.safetensors"), {"quantize": "int8",
                                                                                    "select": "snapkv", "keep": 0.5})
    assert built.kept_tokens is not None and built.kept_tokens < built.tokens
    block = KVBlock(memory_id="m_0123456789abcdef", payload=built.payload)
    got = gpu_service.generate(QUESTION, kv=[block], texts=[], max_new_tokens=8)
    assert got.cached_tokens == built.tokens
