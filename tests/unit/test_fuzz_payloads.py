"""Damaged activation payload files are ``CorruptPayload`` (or ``FingerprintMismatch``), never another exception.

test_activation_format.py pins truncation, a bit flip, a missing file and foreign files. This adds random damage
anywhere in the file, and malformed headers in files whose reference (sha256, size) was written for the damaged
bytes: what a buggy or hostile writer of both the file and the database would leave behind.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_activation_format import fingerprint, payload

from memos.cubes.activation import KVPayload, load_kv, save_kv
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.types import PayloadRef


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    ref = save_kv(payload(), tmp_path_factory.mktemp("kv") / "sound.safetensors")
    return Path(ref.path).read_bytes()


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join(header: Any, tensors: bytes) -> bytes:
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + tensors


def load_as_referenced(tmp_path: Path, data: bytes, *, recompute: bool, original: bytes) -> KVPayload:
    """Write ``data`` and load it through a reference made for ``data`` (recompute) or for ``original``."""
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(data)
    basis = data if recompute else original
    ref = PayloadRef(path=str(path), sha256=hashlib.sha256(basis).hexdigest(), size_bytes=len(basis))
    return load_kv(ref, fingerprint())


@st.composite
def damage(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite-header"]))
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        if kind == "flip":
            out[at] ^= draw(st.integers(1, 255))
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            out[: min(len(out), 8 + draw(st.integers(0, 64)))] = draw(st.binary(max_size=72))
    return bytes(out)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data(), recompute=st.booleans())
def test_random_damage_is_refused_with_a_typed_error(tmp_path: Path, sound: bytes, data: st.DataObject,
                                                     recompute: bool) -> None:
    damaged = data.draw(damage(sound))
    try:
        loaded = load_as_referenced(tmp_path, damaged, recompute=recompute, original=sound)
    except (CorruptPayload, FingerprintMismatch) as exc:
        assert "damaged.safetensors" in str(exc) and str(tmp_path) not in str(exc)  # named, not located
        return
    assert recompute or damaged == sound  # only a file that its reference was made for loads
    assert loaded.fingerprint == fingerprint()


def metadata_with(sound: bytes, **changes: Any) -> bytes:
    header, tensors = split(sound)
    return join({**header, "__metadata__": {**header["__metadata__"], **changes}}, tensors)


@pytest.mark.parametrize("make", [
    pytest.param(lambda s: join({**split(s)[0], "__metadata__": [1, 2]}, split(s)[1]), id="metadata-is-a-list"),
    pytest.param(lambda s: join(b"[" * 100_000 + b"]" * 100_000, split(s)[1]), id="header-nested-100000-deep"),
    pytest.param(lambda s: metadata_with(s, memory_messages="[" * 100_000 + "]" * 100_000), id="messages-nested-deep"),
    pytest.param(lambda s: metadata_with(s, memory_messages='[1, {"role": "system"}]'), id="messages-not-strings"),
    pytest.param(lambda s: join([1], split(s)[1]), id="header-is-a-list"),
    pytest.param(lambda s: metadata_with(s, num_layers="-1"), id="negative-layers"),
    pytest.param(lambda s: metadata_with(s, num_layers="99999999999"), id="too-many-layers"),
    pytest.param(lambda s: metadata_with(s, memory_messages="5"), id="messages-not-a-list"),
    pytest.param(lambda s: metadata_with(s, num_tokens="x"), id="tokens-not-a-number"),
    pytest.param(lambda s: struct.pack("<Q", 2**64 - 1) + s[8:], id="header-length-beyond-the-file"),
    pytest.param(lambda s: struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc" + s[8:], id="header-not-utf8"),
    pytest.param(lambda s: b"", id="empty"),
])
def test_malformed_headers_are_corrupt_payloads(tmp_path: Path, sound: bytes, make: Any) -> None:
    with pytest.raises(CorruptPayload, match="activation payload"):
        load_as_referenced(tmp_path, make(sound), recompute=True, original=sound)
