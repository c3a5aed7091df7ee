"""KV-cache compression without a model (tiny random tensors): every method round-trips through the file format,
records what it kept, refuses tampering; the selection and quantisation math."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from memos.cubes.activation import (
    KVPayload,
    dequantize_keys,
    dequantize_values,
    load_kv,
    pack_codes,
    payload_nbytes,
    save_kv,
    unpack_codes,
)
from memos.errors import CorruptPayload
from memos.models.kv_compression import compress, kept_count, quantize_int8, quantize_lowbit, select_positions
from memos.types import Fingerprint, KVCompression

LAYERS, HEADS, TOKENS, DIM = 3, 2, 40, 8
METHODS = ["none", "int8", "sink_window@0.5", "heavy_hitter@0.3", "snapkv@0.25", "int8+sink_window@0.5",
           "int8+heavy_hitter@0.5", "int8+snapkv@0.3", "int4", "int2", "k8v4", "k8v2", "int4+sink_window@0.5", "int2+snapkv@0.3",
           "k8v4+sink_window@0.75"]


def full_payload(dtype: str = "float32") -> KVPayload:
    gen = torch.Generator().manual_seed(1)
    shape = (HEADS, TOKENS, DIM)
    torch_dtype = getattr(torch, dtype)
    fp = Fingerprint(model_id="tiny@0123", config_hash="c" * 64, tokenizer_hash="t" * 64, dtype=dtype)
    return KVPayload(
        fingerprint=fp,
        memory_messages=("Relevant memory:\nthe kettle is blue",),
        token_ids=tuple(range(200, 200 + TOKENS)),
        keys=tuple(torch.randn(shape, generator=gen).to(torch_dtype) for _ in range(LAYERS)),
        values=tuple(torch.randn(shape, generator=gen).to(torch_dtype) for _ in range(LAYERS)),
    )


def scores() -> torch.Tensor:
    return torch.rand((LAYERS, HEADS, TOKENS), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_each_compression_round_trips_and_records_what_it_kept(tmp_path: Path, method: str, dtype: str) -> None:
    spec = KVCompression.model_validate(method)
    original = full_payload(dtype)
    compressed = compress(original, spec, scores())
    ref = save_kv(compressed, tmp_path / "kv.safetensors")
    loaded = load_kv(ref, original.fingerprint)
    assert loaded.compression == spec
    assert loaded.token_ids == original.token_ids and loaded.num_tokens == TOKENS
    assert loaded.kept_tokens == kept_count(spec, TOKENS)
    assert loaded.exact is spec.is_none
    if spec.select == "none":
        assert loaded.positions is None
    else:
        assert torch.equal(loaded.positions, compressed.positions)
    for (k, v), (k0, v0) in zip(loaded.dense(), compressed.dense(), strict=True):
        assert k.dtype == getattr(torch, dtype) and torch.equal(k, k0) and torch.equal(v, v0)
    meta = _header(Path(ref.path))
    assert json.loads(meta["compression"]) == spec.model_dump()
    assert meta["kept_tokens"] == str(loaded.kept_tokens)


@pytest.mark.parametrize("method", METHODS)
def test_each_compression_refuses_a_tampered_file(tmp_path: Path, method: str) -> None:
    ref = save_kv(compress(full_payload(), KVCompression.model_validate(method), scores()), tmp_path / "kv.safetensors")
    data = bytearray(Path(ref.path).read_bytes())
    data[-3] ^= 0x01
    Path(ref.path).write_bytes(bytes(data))
    with pytest.raises(CorruptPayload, match="altered"):
        load_kv(ref, full_payload().fingerprint)


def test_a_rewritten_record_with_a_matching_digest_is_still_checked(tmp_path: Path) -> None:
    """A file whose header claims a selection but holds no positions is malformed, even with a fresh sha256."""
    import hashlib

    from memos.types import PayloadRef

    ref = save_kv(full_payload(), tmp_path / "kv.safetensors")
    data = Path(ref.path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"]["compression"] = KVCompression.model_validate("snapkv@0.5").model_dump_json()
    raw = json.dumps(header).encode()
    forged = struct.pack("<Q", len(raw)) + raw + data[8 + length :]
    Path(ref.path).write_bytes(forged)
    forged_ref = PayloadRef(path=ref.path, sha256=hashlib.sha256(forged).hexdigest(), size_bytes=len(forged))
    with pytest.raises(CorruptPayload, match="malformed"):
        load_kv(forged_ref, full_payload().fingerprint)


def test_kept_keys_are_the_original_entries_at_their_original_positions() -> None:
    original = full_payload()
    for method in ("sink_window@0.5", "heavy_hitter@0.3", "snapkv@0.25"):
        compressed = compress(original, KVCompression.model_validate(method), scores())
        for layer, (k, v) in enumerate(compressed.dense()):
            for head in range(HEADS):
                where = compressed.positions[layer, head].long()
                assert torch.equal(k[head], original.keys[layer][head, where])
                assert torch.equal(v[head], original.values[layer][head, where])


def test_sink_window_keeps_the_first_and_the_most_recent_tokens() -> None:
    spec = KVCompression(select="sink_window", keep=0.25, sink=4)
    positions = select_positions(spec, TOKENS, LAYERS, HEADS)
    assert positions[0, 0].tolist() == [0, 1, 2, 3, *range(TOKENS - 6, TOKENS)]
    assert torch.equal(positions, positions[0, 0].expand(LAYERS, HEADS, 10))


def test_scored_selections_keep_sinks_recent_and_the_highest_scores_per_head() -> None:
    s = torch.zeros(LAYERS, HEADS, TOKENS)
    s[0, 0, 10] = s[0, 1, 20] = 5.0
    spec = KVCompression(select="heavy_hitter", keep=0.2, sink=2, recent=5)
    positions = select_positions(spec, TOKENS, LAYERS, HEADS, s)
    assert positions.shape == (LAYERS, HEADS, 8)
    assert set(positions[0, 0].tolist()) >= {0, 1, 10, *range(35, 40)}
    assert 20 in positions[0, 1].tolist() and 20 not in positions[0, 0].tolist()
    snap = select_positions(KVCompression(select="snapkv", keep=0.5, sink=2, recent=0, observe=8), TOKENS, LAYERS,
                            HEADS, s)
    assert set(snap[0, 0].tolist()) >= {0, 1, *range(32, 40)}


def test_snapkv_pooling_keeps_the_neighbours_of_a_hot_token() -> None:
    s = torch.zeros(LAYERS, HEADS, TOKENS)
    s[..., 15] = 10.0
    spec = KVCompression(select="snapkv", keep=0.3, sink=0, recent=0, observe=4, pool=5)
    kept = select_positions(spec, TOKENS, LAYERS, HEADS, s)[0, 0].tolist()
    assert {13, 14, 15, 16, 17} <= set(kept)


def test_int8_keeps_keys_per_channel_and_values_per_token_within_half_a_step() -> None:
    gen = torch.Generator().manual_seed(3)
    keys = torch.randn(HEADS, TOKENS, DIM, generator=gen)
    keys[..., 0] *= 50.0  # an outlier channel: per-channel scales keep the others precise
    values = torch.randn(HEADS, TOKENS, DIM, generator=gen)
    qk, qv, ks, vs = quantize_int8(keys, values)
    assert qk.dtype == qv.dtype == torch.int8 and ks.shape == (HEADS, 1, DIM) and vs.shape == (HEADS, TOKENS, 1)
    assert ((qk.float() * ks - keys).abs() <= ks / 2 + 1e-6).all()
    assert ((qv.float() * vs - values).abs() <= vs / 2 + 1e-6).all()
    assert (qk.float() * ks - keys)[..., 1:].abs().max() < 0.03


@pytest.mark.parametrize("bits", [4, 2])
def test_lowbit_codes_pack_and_unpack(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (3, 5, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, 5, 16 * bits // 8) and torch.equal(unpack_codes(packed, bits, 16), codes)


@pytest.mark.parametrize("bits", [4, 2])
def test_lowbit_keeps_sinks_and_window_exact_and_the_rest_within_half_a_group_step(bits: int) -> None:
    gen = torch.Generator().manual_seed(5)
    heads, tokens, dim, group = 2, 100, 64, 32
    keys = torch.randn(heads, tokens, dim, generator=gen)
    keys[..., 3] *= 40.0  # an outlier channel: per-channel groups keep the other channels' steps small
    values = torch.randn(heads, tokens, dim, generator=gen)
    qk, qv, ks, vs, fk, fv = quantize_lowbit(keys, values, bits, bits, group, 4, 16)
    m = tokens - 20
    assert qk.dtype == torch.uint8 and qk.shape == (heads, m, dim * bits // 8)
    assert ks.shape == (2, heads, 3, dim) and vs.shape == (2, heads, m, dim // group) and ks.dtype == torch.float16
    assert torch.equal(fk, torch.cat([keys[:, :4], keys[:, -16:]], dim=1))
    assert torch.equal(fv, torch.cat([values[:, :4], values[:, -16:]], dim=1))
    dk = dequantize_keys(qk, ks, bits, dim, group)
    dv = dequantize_values(qv, vs, bits, dim)
    key_step = ks[0].float().repeat_interleave(group, dim=1)[:, :m]
    value_step = vs[0].float().repeat_interleave(group, dim=-1)
    # Half a step, plus float16 rounding of the minimum.
    assert ((dk - keys[:, 4:-16]).abs() <= key_step / 2 + 2e-3 * keys.abs().amax()).all()
    assert ((dv - values[:, 4:-16]).abs() <= value_step / 2 + 2e-3).all()
    # The outlier widens only its own channel's step.
    assert key_step[..., 3].min() > 10 * key_step[..., [0, 1, 2, 4]].max()


def test_lowbit_dense_puts_the_full_precision_entries_back_in_place() -> None:
    gen = torch.Generator().manual_seed(6)
    fp = full_payload().fingerprint
    keys = tuple(torch.randn(HEADS, 70, 16, generator=gen) for _ in range(LAYERS))
    values = tuple(torch.randn(HEADS, 70, 16, generator=gen) for _ in range(LAYERS))
    full = KVPayload(fingerprint=fp, memory_messages=("x",), token_ids=tuple(range(70)), keys=keys, values=values)
    spec = KVCompression(quantize="int4", sink=4, recent=8, group=16)
    packed = compress(full, spec)
    assert packed.kept_tokens == 70 and packed.keys[0].shape == (HEADS, 58, 8)
    for (k, v), k0, v0 in zip(packed.dense(), keys, values, strict=True):
        assert k.shape == k0.shape and k.dtype == torch.float32
        assert torch.equal(k[:, :4], k0[:, :4]) and torch.equal(k[:, -8:], k0[:, -8:]) and torch.equal(v[:, -8:], v0[:, -8:])
        assert (k[:, 4:-8] - k0[:, 4:-8]).abs().max() < 0.6 and not torch.equal(k[:, 4:-8], k0[:, 4:-8])
    with pytest.raises(ValueError, match="full entries"):
        dataclasses.replace(packed, full_keys=None)
    with pytest.raises(ValueError, match="do not hold"):
        dataclasses.replace(packed, full_keys=tuple(k[:, :-1] for k in packed.full_keys))
    with pytest.raises(ValueError, match="full-precision entries are only"):
        dataclasses.replace(full, full_keys=packed.full_keys, full_values=packed.full_values)


def test_compression_shrinks_the_payload() -> None:
    full = payload_nbytes(full_payload())
    # head_dim 8 here: the per-token value scales weigh more than on a real model (64 channels: ~3.9x smaller)
    assert payload_nbytes(compress(full_payload(), KVCompression(quantize="int8"))) < full / 2.5
    half = compress(full_payload(), KVCompression(select="sink_window", keep=0.5))
    assert payload_nbytes(half) < full * 0.6


def test_an_inconsistent_compressed_payload_cannot_be_built() -> None:
    compressed = compress(full_payload(), KVCompression(select="sink_window", keep=0.5))
    backwards = compressed.positions.flip(-1)
    with pytest.raises(ValueError, match="strictly increasing"):
        dataclasses.replace(compressed, positions=backwards)
    with pytest.raises(ValueError, match="strictly increasing"):
        dataclasses.replace(compressed, positions=compressed.positions + TOKENS)
    with pytest.raises(ValueError, match="do not hold 40 tokens"):
        dataclasses.replace(compressed, positions=None)
    with pytest.raises(ValueError, match="exactly when tokens were selected"):
        dataclasses.replace(full_payload(), positions=torch.arange(TOKENS).expand(LAYERS, HEADS, TOKENS))
    quantized = compress(full_payload(), KVCompression(quantize="int8"))
    with pytest.raises(ValueError, match="scales"):
        dataclasses.replace(quantized, key_scales=None)
    with pytest.raises(ValueError, match="already compressed"):
        compress(quantized, KVCompression(quantize="int8"))


def test_scored_selection_without_scores_is_refused() -> None:
    with pytest.raises(ValueError, match="needs scores"):
        compress(full_payload(), KVCompression(select="snapkv"))


@pytest.mark.parametrize(("text", "fields"), [
    ("none", {}),
    ("int8", {"quantize": "int8"}),
    ("SnapKV@0.25", {"select": "snapkv", "keep": 0.25}),
    ("int8+sink_window", {"quantize": "int8", "select": "sink_window"}),
])
def test_compression_strings(text: str, fields: dict[str, object]) -> None:
    spec = KVCompression.model_validate(text)
    assert spec == KVCompression(**fields)
    assert KVCompression.model_validate(spec.method) == spec


@pytest.mark.parametrize("text", ["zip", "int8+int8", "snapkv@2", "snapkv@x", "int8@0.5", "snapkv+sink_window"])
def test_bad_compression_strings_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        KVCompression.model_validate(text)


def test_an_even_pool_is_refused() -> None:
    with pytest.raises(ValidationError, match="odd"):
        KVCompression(select="snapkv", pool=4)


def test_version_1_files_load_as_uncompressed(tmp_path: Path) -> None:
    import hashlib

    from memos.types import PayloadRef

    ref = save_kv(full_payload(), tmp_path / "kv.safetensors")
    data = Path(ref.path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = header["__metadata__"]
    meta["format_version"] = "1"
    del meta["compression"], meta["kept_tokens"]
    raw = json.dumps(header).encode()
    old = struct.pack("<Q", len(raw)) + raw + data[8 + length :]
    Path(ref.path).write_bytes(old)
    loaded = load_kv(PayloadRef(path=ref.path, sha256=hashlib.sha256(old).hexdigest(), size_bytes=len(old)),
                     full_payload().fingerprint)
    assert loaded.compression.is_none and loaded.kept_tokens == TOKENS


def _header(path: Path) -> dict[str, str]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length])["__metadata__"]
