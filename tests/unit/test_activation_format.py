"""The activation payload file format, with tiny random tensors (no model): round trip, integrity, no pickle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch

from memos.cubes.activation import FORMAT, KVPayload, load_kv, payload_nbytes, save_kv
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.types import Fingerprint, PayloadRef


def fingerprint(dtype: str = "float32", **changes: str) -> Fingerprint:
    fields = {"model_id": "tiny@0123", "config_hash": "c" * 64, "tokenizer_hash": "t" * 64, "dtype": dtype}
    return Fingerprint(**{**fields, **changes})


def payload(dtype: str = "float32", layers: int = 3, tokens: int = 5) -> KVPayload:
    gen = torch.Generator().manual_seed(0)
    shape = (2, tokens, 4)
    torch_dtype = getattr(torch, dtype)
    return KVPayload(
        fingerprint=fingerprint(dtype),
        memory_messages=("Relevant memory:\nthe kettle is blue ✓",),
        token_ids=tuple(range(100, 100 + tokens)),
        keys=tuple(torch.randn(shape, generator=gen).to(torch_dtype) for _ in range(layers)),
        values=tuple(torch.randn(shape, generator=gen).to(torch_dtype) for _ in range(layers)),
    )


def as_version_1(ref: PayloadRef) -> PayloadRef:
    """The file of ``ref`` rewritten as format version 1 (before compression existed: no ``compression`` and
    ``kept_tokens`` in the header); the reference to the rewritten file."""
    data = Path(ref.path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    meta = header["__metadata__"]
    meta["format_version"] = "1"
    del meta["compression"], meta["kept_tokens"]
    raw = json.dumps(header).encode()
    old = struct.pack("<Q", len(raw)) + raw + data[8 + length :]
    Path(ref.path).write_bytes(old)
    return PayloadRef(path=ref.path, sha256=hashlib.sha256(old).hexdigest(), size_bytes=len(old))


@pytest.fixture(params=["2", "1"])
def format_version(request: pytest.FixtureRequest) -> str:
    """Both payload formats a kernel may hold: every test over ``stored`` runs on each."""
    return request.param


@pytest.fixture
def stored(tmp_path: Path, format_version: str) -> tuple[KVPayload, PayloadRef]:
    p = payload()
    ref = save_kv(p, tmp_path / "kv" / "m_1-v1.safetensors")
    return p, (as_version_1(ref) if format_version == "1" else ref)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_preserves_tensors_token_ids_and_messages(tmp_path: Path, dtype: str) -> None:
    original = payload(dtype)
    loaded = load_kv(save_kv(original, tmp_path / "kv.safetensors"), original.fingerprint)
    assert loaded.token_ids == original.token_ids
    assert loaded.memory_messages == original.memory_messages
    assert loaded.fingerprint == original.fingerprint
    assert loaded.exact is True
    for a, b in zip(loaded.keys + loaded.values, original.keys + original.values, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_reference_names_the_file_its_sha256_and_size(stored: tuple[KVPayload, PayloadRef]) -> None:
    _, ref = stored
    data = Path(ref.path).read_bytes()
    assert ref.size_bytes == len(data)
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.format == "safetensors"


def test_header_is_plain_json_with_the_fingerprint_and_format(stored: tuple[KVPayload, PayloadRef],
                                                               format_version: str) -> None:
    p, ref = stored
    data = Path(ref.path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + length])["__metadata__"]
    assert meta["format"] == FORMAT and meta["format_version"] == format_version
    assert {k: meta[k] for k in ("model_id", "config_hash", "tokenizer_hash", "dtype")} == p.fingerprint.model_dump()
    assert meta["num_tokens"] == "5" and meta["num_layers"] == "3"
    if format_version == "2":
        assert meta["kept_tokens"] == "5" and json.loads(meta["compression"])["quantize"] == "none"


def test_both_formats_load_to_the_same_payload(stored: tuple[KVPayload, PayloadRef]) -> None:
    p, ref = stored
    loaded = load_kv(ref, p.fingerprint)
    assert loaded.token_ids == p.token_ids and loaded.memory_messages == p.memory_messages
    assert loaded.compression.is_none and loaded.kept_tokens == len(p.token_ids)
    for a, b in zip(loaded.keys + loaded.values, p.keys + p.values, strict=True):
        assert torch.equal(a, b)


def test_save_leaves_no_temporary_file_and_replaces_an_older_file(tmp_path: Path) -> None:
    target = tmp_path / "kv.safetensors"
    first = save_kv(payload(tokens=5), target)
    second = save_kv(payload(tokens=7), target)
    assert [f.name for f in tmp_path.iterdir()] == ["kv.safetensors"]
    assert second.sha256 != first.sha256
    assert load_kv(second, fingerprint()).num_tokens == 7


def test_truncated_file_is_refused_naming_the_file(stored: tuple[KVPayload, PayloadRef]) -> None:
    _, ref = stored
    path = Path(ref.path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptPayload, match="m_1-v1.safetensors") as err:
        load_kv(ref, fingerprint())
    # Named, not located: an error may reach a remote caller, so no absolute server path (here no blobs/ dir: the name).
    assert err.value.details["path"] == "m_1-v1.safetensors" and str(path.parent) not in str(err.value)


def test_bit_flip_is_refused_naming_the_file(stored: tuple[KVPayload, PayloadRef]) -> None:
    _, ref = stored
    path = Path(ref.path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: the file still parses, only the hash can tell
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptPayload, match=r"m_1-v1\.safetensors is altered"):
        load_kv(ref, fingerprint())


def test_missing_file_is_refused_naming_the_file(stored: tuple[KVPayload, PayloadRef]) -> None:
    _, ref = stored
    Path(ref.path).unlink()
    with pytest.raises(CorruptPayload, match="m_1-v1.safetensors is missing"):
        load_kv(ref, fingerprint())


def test_sound_file_of_another_format_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save

    data = save({"x": torch.zeros(2)}, metadata={"format": "pt"})
    path = tmp_path / "other.safetensors"
    path.write_bytes(data)
    ref = PayloadRef(path=str(path), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
    with pytest.raises(CorruptPayload, match="other.safetensors has format 'pt'"):
        load_kv(ref, fingerprint())


@pytest.mark.parametrize("field", ["model_id", "config_hash", "tokenizer_hash", "dtype"])
def test_payload_for_another_model_is_refused_naming_the_field(
    stored: tuple[KVPayload, PayloadRef], field: str
) -> None:
    _, ref = stored
    other = fingerprint(**{field: "bfloat16" if field == "dtype" else "other"})
    with pytest.raises(FingerprintMismatch, match=field) as err:
        load_kv(ref, other)
    assert err.value.details["fields"] == [field]


def test_loading_never_unpickles(stored: tuple[KVPayload, PayloadRef], monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle/torch.load used while loading a payload")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    p, ref = stored
    assert load_kv(ref, fingerprint()).token_ids == p.token_ids


def test_payload_is_frozen() -> None:
    p = payload()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.token_ids = (1,)  # type: ignore[misc]
    assert isinstance(p.keys, tuple) and isinstance(p.token_ids, tuple)


def test_inconsistent_payload_cannot_be_built() -> None:
    p = payload()
    with pytest.raises(ValueError, match="do not hold 4 tokens"):
        dataclasses.replace(p, token_ids=p.token_ids[:4])
    with pytest.raises(ValueError, match="fingerprint says bfloat16"):
        dataclasses.replace(p, fingerprint=fingerprint("bfloat16"))


def test_payload_nbytes_counts_tensors_and_token_ids() -> None:
    p = payload(layers=3, tokens=5)
    assert payload_nbytes(p) == 3 * 2 * (2 * 5 * 4 * 4) + 5 * 8
