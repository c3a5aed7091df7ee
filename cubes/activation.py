"""Activation MemCubes: a model's KV cache for a memory's text, and its file format.

A :class:`KVPayload` is what the model host computed for a memory prefix: per-layer keys and values, the exact token
ids they belong to, the contents of the system messages those tokens render, and the fingerprint of the model that
made them. It is immutable: a frozen dataclass whose tensors no code path writes to (the model host builds every
generation's cache by concatenation, i.e. on a copy; the tensors of a freshly built payload are inference tensors,
which torch refuses to modify in place outside inference mode).

File format (``FORMAT = "memos.kv"``, ``FORMAT_VERSION = 1``), one safetensors file:

- tensors ``layers.<i>.keys`` and ``layers.<i>.values``, shape ``[kv_heads, tokens, head_dim]`` in the fingerprint's
  dtype; ``token_ids``, int64 ``[tokens]``. Keys are stored as the model caches them (after RoPE, at positions
  ``0..tokens-1``).
- header metadata (strings): ``format``, ``format_version``, ``model_id``, ``config_hash``, ``tokenizer_hash``,
  ``dtype``, ``num_tokens``, ``num_layers``, ``exact`` and ``memory_messages`` (a JSON list).

:func:`save_kv` writes to a temporary name in the target directory, fsyncs, renames and fsyncs the directory, and
returns a :class:`~memos.types.PayloadRef` (path, sha256 of the whole file, size). The sha256 lives in the MemCube
header, outside the file. :func:`load_kv` reads the file once into memory, checks size, then sha256, then parses
those same verified bytes (nothing is re-read between check and use), then checks the fingerprint. Nothing here
unpickles: safetensors is a JSON header plus raw little-endian tensor data.

torch and safetensors are imported lazily: the kernel imports this module (types, checks) without loading torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.cubes.blobs import read_header, read_verified, write_payload
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.types import Fingerprint, PayloadRef

if TYPE_CHECKING:
    import torch

FORMAT = "memos.kv"
FORMAT_VERSION = 1
_FINGERPRINT_FIELDS = ("model_id", "config_hash", "tokenizer_hash", "dtype")
_WHAT = "activation payload"


@dataclass(frozen=True, eq=False)
class KVPayload:
    """The KV cache of a memory prefix, valid only for the model named by ``fingerprint``.

    Attributes:
        fingerprint: the model (id, config, tokenizer, dtype) that computed the tensors.
        memory_messages: contents of the system messages, in prompt order, whose chat-template rendering tokenises
            to exactly ``token_ids`` (the model host decides the rendering; see ``memos.models.host``).
        token_ids: the cached tokens, positions ``0..len-1``.
        keys: per layer, ``[kv_heads, tokens, head_dim]``.
        values: per layer, same shapes as ``keys``.
        exact: True when the tensors are what a prefill of ``token_ids`` computes; False for a composition whose
            later parts were computed without attending to the earlier ones (RoPE re-rotation).

    Raises:
        ValueError: on construction, when the shapes, lengths or dtype are inconsistent.
    """

    fingerprint: Fingerprint
    memory_messages: tuple[str, ...]
    token_ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    exact: bool = True

    def __post_init__(self) -> None:
        if not self.keys or len(self.keys) != len(self.values):
            raise ValueError(f"need one keys and one values tensor per layer, got {len(self.keys)} and {len(self.values)}")
        n = len(self.token_ids)
        dtype = f"torch.{self.fingerprint.dtype}"
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k.dim() != 3 or k.shape != v.shape or k.shape[1] != n:
                raise ValueError(f"layer {i}: keys {tuple(k.shape)} / values {tuple(v.shape)} do not hold {n} tokens")
            if str(k.dtype) != dtype or v.dtype != k.dtype:
                raise ValueError(f"layer {i}: dtype {k.dtype}/{v.dtype}, fingerprint says {self.fingerprint.dtype}")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_layers(self) -> int:
        return len(self.keys)



def payload_nbytes(payload: KVPayload) -> int:
    """Bytes ``payload`` holds in RAM (tensors and token ids): the unit of the kernel's in-RAM budget."""
    tensors = sum(k.nbytes + v.nbytes for k, v in zip(payload.keys, payload.values, strict=True))
    return tensors + 8 * payload.num_tokens


def check_fingerprint(found: Fingerprint, expected: Fingerprint, *, what: str) -> None:
    """Refuse ``found`` unless every field equals ``expected``'s.

    Raises:
        FingerprintMismatch: naming ``what`` and each differing field with both values.
    """
    differing = [f for f in _FINGERPRINT_FIELDS if getattr(found, f) != getattr(expected, f)]
    if differing:
        detail = "; ".join(f"{f}: {getattr(found, f)!r} != loaded model's {getattr(expected, f)!r}" for f in differing)
        raise FingerprintMismatch(
            f"{what} was built for another model ({detail})",
            fields=differing,
            found=found.model_dump(),
            expected=expected.model_dump(),
        )


def save_kv(payload: KVPayload, path: str | Path) -> PayloadRef:
    """Write ``payload`` to ``path`` atomically (temp name, fsync, rename, fsync dir); return its reference.

    An existing file at ``path`` is replaced. The reference holds ``path`` as given.

    Raises:
        BackendError: the file cannot be written (nothing new is left at ``path`` in that case).
    """
    import torch
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    for i, (k, v) in enumerate(zip(payload.keys, payload.values, strict=True)):
        tensors[f"layers.{i}.keys"] = k.contiguous()
        tensors[f"layers.{i}.values"] = v.contiguous()
    tensors["token_ids"] = torch.tensor(payload.token_ids, dtype=torch.int64)
    fp = payload.fingerprint
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_id": fp.model_id,
        "config_hash": fp.config_hash,
        "tokenizer_hash": fp.tokenizer_hash,
        "dtype": fp.dtype,
        "num_tokens": str(payload.num_tokens),
        "num_layers": str(payload.num_layers),
        "exact": "true" if payload.exact else "false",
        "memory_messages": json.dumps(list(payload.memory_messages), ensure_ascii=False),
    }
    data = save(tensors, metadata=metadata)
    return write_payload(path, data, what=_WHAT)


def load_kv(ref: PayloadRef, expected: Fingerprint) -> KVPayload:
    """Load the payload ``ref`` points to, for the model whose fingerprint is ``expected``.

    Checks, in order: the file exists with ``ref.size_bytes`` bytes, its sha256 is ``ref.sha256``, it parses as this
    format and version with consistent shapes, and its fingerprint equals ``expected``.

    Raises:
        CorruptPayload: missing, truncated, altered or malformed file (the message names the file).
        FingerprintMismatch: a sound file built for another model (the message names the differing fields).
    """
    data = read_verified(ref, what=_WHAT)
    path = ref.path
    payload = _parse(data, name=str(path))
    check_fingerprint(payload.fingerprint, expected, what=f"{_WHAT} {path}")
    return payload


def _parse(data: bytes, *, name: str) -> KVPayload:
    """Parse the bytes of a payload file (integrity-checked by the caller); ``name`` is used in errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = _read_metadata(data, name)
    try:
        tensors = load(data)
        fingerprint = Fingerprint(**{f: meta[f] for f in _FINGERPRINT_FIELDS})
        num_layers = int(meta["num_layers"])
        memory_messages = tuple(json.loads(meta["memory_messages"]))
        if not all(isinstance(message, str) for message in memory_messages):
            raise ValueError("memory_messages must be a list of strings")
        token_ids = tuple(tensors["token_ids"].tolist())
        if len(token_ids) != int(meta["num_tokens"]) or meta["exact"] not in ("true", "false"):
            raise ValueError("header does not match the tensors")
        return KVPayload(
            fingerprint=fingerprint,
            memory_messages=memory_messages,
            token_ids=token_ids,
            keys=tuple(tensors[f"layers.{i}.keys"] for i in range(num_layers)),
            values=tuple(tensors[f"layers.{i}.values"] for i in range(num_layers)),
            exact=meta["exact"] == "true",
        )
    except (SafetensorError, KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CorruptPayload(f"{_WHAT} {name} is malformed: {exc}", path=name) from exc


def _read_metadata(data: bytes, name: str) -> dict[str, str]:
    return read_header(data, name, what=_WHAT, format=FORMAT, version=FORMAT_VERSION,
                       required=(*_FINGERPRINT_FIELDS, "num_tokens", "num_layers", "exact", "memory_messages"))
