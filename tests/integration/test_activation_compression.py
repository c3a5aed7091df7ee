"""Compressed activation caches on the real default model: each method round-trips (build, write, verify, load,
inject), ``none`` still equals a full prefill token for token, and a compressed cache is exact about positions (the
continuation starts at the block's original length; kept keys keep their original rotation)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memos.cubes.activation import load_kv, save_kv
from memos.errors import CorruptPayload
from memos.models.host import ModelHost, memory_messages
from memos.models.kv_compression import kept_count
from memos.types import KVCompression

pytestmark = pytest.mark.integration

MEMORY = (
    "Mara Quill keeps the brass key in the lighthouse.\n"
    "Tomas Reyk keeps the red notebook in the cellar.\n"
    "The team meeting moved to Thursday at 3 pm in room B.\n"
    "Ines Darrow keeps the silver compass in the greenhouse."
)
QUESTION = [{"role": "user", "content": "Where does Tomas Reyk keep the red notebook?"}]


@pytest.fixture(scope="module")
def host(model_service) -> ModelHost:
    return model_service.host


@pytest.fixture(scope="module")
def full(host: ModelHost):
    return host.build_kv(MEMORY)


@pytest.fixture(scope="module")
def reference(host: ModelHost):
    return host.generate(memory_messages([MEMORY]) + QUESTION, max_new_tokens=12)


@pytest.mark.parametrize("method", ["none", "int8", "sink_window@0.5", "heavy_hitter@0.5", "snapkv@0.5",
                                    "int8+snapkv@0.5", "k8v4", "int4+sink_window@0.5"])
def test_each_compression_round_trips_through_disk_into_a_generation(
    host: ModelHost, full, reference, tmp_path: Path, method: str
) -> None:
    spec = KVCompression.model_validate(method)
    built = host.build_kv(MEMORY, compression=method)
    assert built.compression == spec and built.token_ids == full.token_ids
    ref = save_kv(built, tmp_path / "kv.safetensors")
    loaded = host.load_kv(ref)
    assert loaded.compression == spec and loaded.kept_tokens == built.kept_tokens
    if spec.select != "none":
        assert loaded.kept_tokens == kept_count(spec, full.num_tokens) < full.num_tokens
        assert torch.equal(loaded.positions, built.positions)
        # Kept keys are the full prefill's keys at their original positions (never re-rotated).
        for layer in (0, full.num_layers - 1):
            where = loaded.positions[layer, 0].long()
            expected = full.keys[layer][0, where]
            got = loaded.dense()[layer][0][0]
            tolerance = {"none": 1e-3, "int8": 0.05, "k8v4": 0.05}.get(spec.quantize, 1.0)  # int4: 15 steps per group
            assert torch.allclose(got, expected, atol=tolerance)
    got = host.generate(QUESTION, kv=loaded, max_new_tokens=12)
    assert got.cached_tokens == full.num_tokens and got.prompt_tokens == reference.prompt_tokens
    if spec.is_none:
        assert got.token_ids == reference.token_ids
    else:
        assert got.token_ids  # measured against the full prefill in `memos bench activation`, not asserted here
    data = bytearray(Path(ref.path).read_bytes())
    data[len(data) // 2] ^= 0x10
    Path(ref.path).write_bytes(bytes(data))
    with pytest.raises(CorruptPayload):
        load_kv(ref, host.fingerprint)


def test_a_compressed_cache_continues_at_the_original_positions(host: ModelHost) -> None:
    """The reference is one forward pass over the whole prompt where the question may not attend to the dropped
    memory tokens (a 4D mask), with every token at its true position: exactly what injecting the compressed cache
    must compute. Continuing at the cache's own length instead (positions shifted by the dropped tokens) is
    measurably different, so the test would catch it."""
    compressed = host.build_kv(MEMORY, compression="sink_window@0.5")
    n = compressed.num_tokens
    kept = set(compressed.positions[0, 0].tolist())
    ids = host._encode(host._render(memory_messages([MEMORY]) + QUESTION, generation_prompt=True))
    total = len(ids)
    allowed = torch.ones(total, total, dtype=torch.bool).tril()
    dropped = [p for p in range(n) if p not in kept]
    allowed[n:, dropped] = False
    model = host._model
    with torch.inference_mode():
        true_positions = model(input_ids=torch.tensor([ids]), attention_mask=allowed[None, None],
                               position_ids=torch.arange(total)[None]).logits[0, -1]
        shift = n - len(kept)
        shifted = torch.cat([torch.arange(n), torch.arange(n, total) - shift])
        wrong_positions = model(input_ids=torch.tensor([ids]), attention_mask=allowed[None, None],
                                position_ids=shifted[None]).logits[0, -1]
        cache = host._cache_of(compressed)
        injected = model(input_ids=torch.tensor([ids[n:]]), position_ids=torch.arange(n, total)[None],
                         past_key_values=cache, use_cache=True).logits[0, -1]
    assert (true_positions - wrong_positions).abs().max() > 0.1
    assert torch.allclose(injected, true_positions, atol=2e-3)
    # And the host's own generation takes the same first token as the masked reference.
    got = host.generate(QUESTION, kv=compressed, max_new_tokens=1)
    assert got.token_ids == (int(true_positions.argmax()),) or got.finish_reason == "stop"


def test_snapkv_chooses_per_head_and_keeps_the_sinks_and_the_observation_window(host: ModelHost) -> None:
    spec = KVCompression(select="snapkv", keep=0.4, observe=16)
    built = host.build_kv(MEMORY, compression=spec)
    n = built.num_tokens
    positions = built.positions
    assert positions.shape == (built.num_layers, built.keys[0].shape[0], built.kept_tokens)
    for row in positions.reshape(-1, built.kept_tokens).tolist():
        assert set(range(spec.sink)) | set(range(n - 16, n)) <= set(row)
    assert len({tuple(r) for r in positions.reshape(-1, built.kept_tokens).tolist()}) > 1  # not one shared choice


def test_composing_a_compressed_cache_keeps_its_positions(host: ModelHost) -> None:
    first = host.build_kv(MEMORY, compression="sink_window@0.5")
    second = host.build_kv("Oskar Lind keeps the old radio in the attic.")
    joined = host.compose([first, second], method="recompute")
    assert joined.num_tokens == first.num_tokens + second.num_tokens
    assert joined.kept_tokens == first.kept_tokens + second.num_tokens
    assert joined.positions[0, 0, -1].item() == joined.num_tokens - 1 and not joined.exact
    rotated = host.compose([first, second], method="rotate")
    assert torch.equal(rotated.positions, joined.positions)
    got = host.generate(QUESTION, kv=joined, max_new_tokens=4)
    assert got.cached_tokens == joined.num_tokens
