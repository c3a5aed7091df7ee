"""The parametric (LoRA adapter) payload format, with tiny random tensors (no model): round trip, header,
integrity, fingerprint, no pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from memos.cubes.parametric import (
    FORMAT,
    AdapterInfo,
    AdapterPayload,
    adapter_info,
    load_adapter,
    save_adapter,
)
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.types import Fingerprint, MemoryRef, PayloadRef

SOURCES = (MemoryRef(id="m_0123456789abcdef", version=3), MemoryRef(id="m_fedcba9876543210", version=1))
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


def fingerprint(**changes: str) -> Fingerprint:
    fields = {"model_id": "tiny@0123", "config_hash": "c" * 64, "tokenizer_hash": "t" * 64, "dtype": "float32"}
    return Fingerprint(**{**fields, **changes})


def payload(rank: int = 2) -> AdapterPayload:
    gen = torch.Generator().manual_seed(0)
    shapes = {MODULES[0]: (8, 8), MODULES[1]: (8, 12)}  # (out, in)
    weights = {m: (torch.randn(rank, i, generator=gen), torch.randn(o, rank, generator=gen)) for m, (o, i) in shapes.items()}
    info = AdapterInfo(
        fingerprint=fingerprint(),
        sources=SOURCES,
        rank=rank,
        alpha=2.0 * rank,
        modules=MODULES,
        config={"rank": rank, "learning_rate": 0.001, "target_modules": ["q_proj", "down_proj"]},
        loss_curve=((1, 4.5), (2, 2.25), (3, 0.75)),
        evaluation={"recall_with": 0.9, "recall_without": 0.0, "locality_delta": 0.01, "misses": []},
    )
    return AdapterPayload(info=info, weights=weights)


@pytest.fixture
def stored(tmp_path: Path) -> tuple[AdapterPayload, PayloadRef]:
    p = payload()
    return p, save_adapter(p, str(tmp_path / "adapters" / "m_1-v1.safetensors"))


def test_round_trip_preserves_factors_and_header(stored: tuple[AdapterPayload, PayloadRef]) -> None:
    original, ref = stored
    loaded = load_adapter(ref, fingerprint())
    assert loaded.info == original.info
    assert loaded.info.scaling == 2.0
    assert set(loaded.weights) == set(MODULES)
    for m in MODULES:
        for a, b in zip(loaded.weights[m], original.weights[m], strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
    assert loaded.num_parameters == original.num_parameters == 2 * (8 + 8) + 2 * (12 + 8)


def test_header_lists_the_source_memories_and_versions_without_loading_tensors(
    stored: tuple[AdapterPayload, PayloadRef],
) -> None:
    _, ref = stored
    info = adapter_info(ref)
    assert info.sources == SOURCES
    assert info.loss_curve == ((1, 4.5), (2, 2.25), (3, 0.75))
    assert info.evaluation["recall_with"] == 0.9 and info.config["learning_rate"] == 0.001


def test_header_is_plain_json_with_format_fingerprint_and_provenance(stored: tuple[AdapterPayload, PayloadRef]) -> None:
    p, ref = stored
    data = Path(ref.path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = header["__metadata__"]
    assert meta["format"] == FORMAT and meta["format_version"] == "1"
    assert {k: meta[k] for k in ("model_id", "config_hash", "tokenizer_hash", "dtype")} == p.fingerprint.model_dump()
    assert json.loads(meta["sources"]) == [{"id": "m_0123456789abcdef", "version": 3}, {"id": "m_fedcba9876543210", "version": 1}]
    assert set(header) - {"__metadata__"} == {f"{m}.lora_{x}" for m in MODULES for x in "AB"}


def test_reference_names_the_file_its_sha256_and_size(stored: tuple[AdapterPayload, PayloadRef]) -> None:
    _, ref = stored
    data = Path(ref.path).read_bytes()
    assert (ref.size_bytes, ref.sha256, ref.format) == (len(data), hashlib.sha256(data).hexdigest(), "safetensors")


def test_save_leaves_no_temporary_file_and_replaces_an_older_file(tmp_path: Path) -> None:
    target = tmp_path / "a.safetensors"
    first = save_adapter(payload(rank=2), str(target))
    second = save_adapter(payload(rank=4), str(target))
    assert [f.name for f in tmp_path.iterdir()] == ["a.safetensors"]
    assert second.sha256 != first.sha256
    assert load_adapter(second, fingerprint()).info.rank == 4


def test_truncated_file_is_refused_naming_the_file(stored: tuple[AdapterPayload, PayloadRef]) -> None:
    _, ref = stored
    path = Path(ref.path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptPayload, match="m_1-v1.safetensors") as err:
        load_adapter(ref, fingerprint())
    # Named, not located: an error may reach a remote caller, so no absolute server path (here no blobs/ dir: the name).
    assert err.value.details["path"] == "m_1-v1.safetensors" and str(path.parent) not in str(err.value)


def test_bit_flip_is_refused_naming_the_file(stored: tuple[AdapterPayload, PayloadRef]) -> None:
    _, ref = stored
    path = Path(ref.path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: the file still parses, only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptPayload, match=r"m_1-v1\.safetensors is altered"):
        load_adapter(ref, fingerprint())
    with pytest.raises(CorruptPayload, match="is altered"):
        adapter_info(ref)


def test_missing_file_is_refused_naming_the_file(stored: tuple[AdapterPayload, PayloadRef]) -> None:
    _, ref = stored
    Path(ref.path).unlink()
    with pytest.raises(CorruptPayload, match="m_1-v1.safetensors is missing"):
        load_adapter(ref, fingerprint())


def _ref_of(path: Path, data: bytes) -> PayloadRef:
    path.write_bytes(data)
    return PayloadRef(path=str(path), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def test_activation_payload_or_other_safetensors_is_refused_as_an_adapter(tmp_path: Path) -> None:
    from safetensors.torch import save

    ref = _ref_of(tmp_path / "kv.safetensors", save({"x": torch.zeros(2)}, metadata={"format": "memos.kv"}))
    with pytest.raises(CorruptPayload, match="kv.safetensors has format 'memos.kv'"):
        load_adapter(ref, fingerprint())


def test_header_that_does_not_match_its_tensors_is_refused(stored: tuple[AdapterPayload, PayloadRef], tmp_path: Path) -> None:
    from safetensors.torch import load, save

    _, ref = stored
    data = Path(ref.path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + length])["__metadata__"]
    tensors = load(data)
    del tensors[f"{MODULES[1]}.lora_B"]
    bad = _ref_of(tmp_path / "bad.safetensors", save(tensors, metadata=meta))
    with pytest.raises(CorruptPayload, match="bad.safetensors is malformed"):
        load_adapter(bad, fingerprint())
    meta["sources"] = json.dumps([{"id": "not-an-id", "version": 0}])
    worse = _ref_of(tmp_path / "worse.safetensors", save(load(data), metadata=meta))
    with pytest.raises(CorruptPayload, match="worse.safetensors has a malformed header"):
        load_adapter(worse, fingerprint())


@pytest.mark.parametrize("field", ["model_id", "config_hash", "tokenizer_hash", "dtype"])
def test_adapter_for_another_base_model_is_refused_naming_the_field(
    stored: tuple[AdapterPayload, PayloadRef], field: str
) -> None:
    _, ref = stored
    other = fingerprint(**{field: "bfloat16" if field == "dtype" else "other"})
    with pytest.raises(FingerprintMismatch, match=field) as err:
        load_adapter(ref, other)
    assert err.value.details["fields"] == [field]


def test_fingerprint_is_checked_before_any_tensor_is_materialised(
    stored: tuple[AdapterPayload, PayloadRef], monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("tensors loaded before the fingerprint check")

    monkeypatch.setattr(safetensors.torch, "load", forbidden)
    _, ref = stored
    with pytest.raises(FingerprintMismatch):
        load_adapter(ref, fingerprint(model_id="other"))


def test_loading_never_unpickles(stored: tuple[AdapterPayload, PayloadRef], monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle/torch.load used while loading an adapter")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    p, ref = stored
    assert load_adapter(ref, fingerprint()).info.sources == p.info.sources


def test_payload_is_frozen_and_inconsistent_payloads_cannot_be_built() -> None:
    p = payload()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.info = p.info  # type: ignore[misc]
    with pytest.raises(ValueError, match="at least one source"):
        dataclasses.replace(p, info=dataclasses.replace(p.info, sources=()))
    with pytest.raises(ValueError, match="exactly once"):
        dataclasses.replace(p, info=dataclasses.replace(p.info, modules=MODULES[:1]))
    with pytest.raises(ValueError, match="for rank 3"):
        dataclasses.replace(p, info=dataclasses.replace(p.info, rank=3))
    a, b = p.weights[MODULES[0]]
    with pytest.raises(ValueError, match="floating point"):
        dataclasses.replace(p, weights={**p.weights, MODULES[0]: (a.long(), b)})
