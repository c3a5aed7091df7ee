"""Activation MemCubes: a model's KV cache for a memory's text, and its file format.

A :class:`KVPayload` is what the model host computed for a memory prefix: per-layer keys and values, the exact token
ids they belong to, the contents of the system messages those tokens render, and the fingerprint of the model that
made them. It is immutable: a frozen dataclass whose tensors no code path writes to (the model host builds every
generation's cache by concatenation, i.e. on a copy; the tensors of a freshly built payload are inference tensors,
which torch refuses to modify in place outside inference mode).

File format (``FORMAT = "memos.kv"``, ``FORMAT_VERSION = 2``; version 1 files, written before compression existed,
still load as uncompressed payloads), one safetensors file:

- tensors ``layers.<i>.keys`` and ``layers.<i>.values``, shape ``[kv_heads, kept, head_dim]``: the model's dtype, or
  int8 with ``layers.<i>.key_scales`` (float32 ``[kv_heads, 1, head_dim]``, per channel) and
  ``layers.<i>.value_scales`` (float32 ``[kv_heads, kept, 1]``, per token), or, for low-bit (:data:`LOWBIT`), uint8
  codes packed along ``head_dim`` for the kept entries between the sinks and the residual window, float16
  ``(scale, minimum)`` pairs per group in the scales, and ``layers.<i>.full_keys`` / ``full_values`` (the model's
  dtype) for the sinks and the window (see :func:`lowbit_split`); ``token_ids``, int64 ``[tokens]``: every
  token of the block, kept or not (a prompt is checked against them); ``positions``, int32
  ``[layers, kv_heads, kept]``, only when tokens were selected: the original position of each kept entry, strictly
  increasing per layer and head. Keys are stored as the model caches them (after RoPE at their original positions,
  never re-rotated), so an entry is valid exactly at its recorded position and a continuation starts at position
  ``tokens``.
- header metadata (strings): ``format``, ``format_version``, ``model_id``, ``config_hash``, ``tokenizer_hash``,
  ``dtype``, ``num_tokens``, ``num_layers``, ``exact``, ``memory_messages`` (a JSON list) and, from version 2,
  ``kept_tokens`` and ``compression`` (the :class:`~memos.types.KVCompression` as JSON: method and parameters).

:func:`save_kv` writes to a temporary name in the target directory, fsyncs, renames and fsyncs the directory, and
returns a :class:`~memos.types.PayloadRef` (path, sha256 of the whole file, size). The sha256 lives in the MemCube
header, outside the file. :func:`load_kv` reads the file once into memory, checks size, then sha256, then parses
those same verified bytes (nothing is re-read between check and use), then checks the fingerprint. Nothing here
unpickles: safetensors is a JSON header plus raw little-endian tensor data.

torch and safetensors are imported lazily: the kernel imports this module (types, checks) without loading torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memos.cubes.blobs import read_header, read_verified, shown, write_payload
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.types import Fingerprint, KVCompression, PayloadRef

if TYPE_CHECKING:
    import torch

FORMAT = "memos.kv"
FORMAT_VERSION = 2
_NO_COMPRESSION = KVCompression()
_FINGERPRINT_FIELDS = ("model_id", "config_hash", "tokenizer_hash", "dtype")
_WHAT = "activation payload"
#: Bits per key code and per value code of the low-bit (KIVI-style) quantisations.
LOWBIT = {"int4": (4, 4), "int2": (2, 2), "k8v4": (8, 4), "k8v2": (8, 2)}


@dataclass(frozen=True, eq=False)
class KVPayload:
    """The KV cache of a memory prefix, valid only for the model named by ``fingerprint``.

    Attributes:
        fingerprint: the model (id, config, tokenizer, dtype) that computed the tensors.
        memory_messages: contents of the system messages, in prompt order, whose chat-template rendering tokenises
            to exactly ``token_ids`` (the model host decides the rendering; see ``memos.models.host``).
        token_ids: every token of the prefix, positions ``0..len-1`` (kept or not: a continuation starts after them).
        keys: per layer, ``[kv_heads, kept, head_dim]``: the fingerprint's dtype, or int8 (see ``key_scales``).
        values: per layer, same shapes as ``keys``.
        exact: True when the tensors are what a prefill of ``token_ids`` computes (and all of it); False for a
            lossy compression or a composition whose later parts did not attend to the earlier ones.
        positions: ``None`` when every token is kept (entry ``j`` is position ``j``); else int ``[layers, kv_heads,
            kept]``, the original position of each kept entry, strictly increasing per layer and head.
        compression: how the tensors were compressed (method and parameters).
        key_scales / value_scales: with int8 tensors, per layer float32 ``[kv_heads, 1, head_dim]`` (per channel) and
            ``[kv_heads, kept, 1]`` (per token); with a low-bit quantisation, float16 ``[2, kv_heads, ceil(m / group), head_dim]``
            (keys: scale and minimum per channel and group of ``group`` tokens) and ``[2, kv_heads, m, head_dim /
            value_group]`` (values: per token and group of channels), ``m`` the quantised entries; ``None`` otherwise.
        full_keys / full_values: with a low-bit quantisation, per layer ``[kv_heads, sink + recent, head_dim]`` in the
            fingerprint's dtype: the first and last kept entries, stored as computed (:func:`lowbit_split`).

    Raises:
        ValueError: on construction, when the shapes, lengths, positions or dtypes are inconsistent.
    """

    fingerprint: Fingerprint
    memory_messages: tuple[str, ...]
    token_ids: tuple[int, ...]
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    exact: bool = True
    positions: torch.Tensor | None = None
    compression: KVCompression = _NO_COMPRESSION
    key_scales: tuple[torch.Tensor, ...] | None = None
    value_scales: tuple[torch.Tensor, ...] | None = None
    full_keys: tuple[torch.Tensor, ...] | None = None
    full_values: tuple[torch.Tensor, ...] | None = None

    def __post_init__(self) -> None:
        if not self.keys or len(self.keys) != len(self.values):
            raise ValueError(f"need one keys and one values tensor per layer, got {len(self.keys)} and {len(self.values)}")
        n = len(self.token_ids)
        if self.compression.quantize in LOWBIT:
            self._check_positions(n)
            self._check_lowbit()
            return
        if self.full_keys is not None or self.full_values is not None:
            raise ValueError("full-precision entries are only for low-bit payloads (int4, int2, k8v4, k8v2)")
        kept = self.kept_tokens
        quantized = self.compression.quantize == "int8"
        dtype = "torch.int8" if quantized else f"torch.{self.fingerprint.dtype}"
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            if k.dim() != 3 or k.shape != v.shape or k.shape[1] != kept:
                raise ValueError(f"layer {i}: keys {tuple(k.shape)} / values {tuple(v.shape)} do not hold {kept} tokens")
            if str(k.dtype) != dtype or v.dtype != k.dtype:
                stored = ", stored as int8" if quantized else ""
                raise ValueError(f"layer {i}: dtype {k.dtype}/{v.dtype}, fingerprint says {self.fingerprint.dtype}{stored}")
        self._check_scales(quantized)
        self._check_positions(n)

    def _check_lowbit(self) -> None:
        key_bits, value_bits = LOWBIT[self.compression.quantize]
        head, tail = lowbit_split(self.compression, self.kept_tokens)
        m = self.kept_tokens - head - tail
        parts = (self.key_scales, self.value_scales, self.full_keys, self.full_values)
        if any(p is None or len(p) != len(self.keys) for p in parts):
            raise ValueError(f"an {self.compression.quantize} payload needs scales and full entries for every layer")
        assert self.key_scales and self.value_scales and self.full_keys and self.full_values
        dtype = f"torch.{self.fingerprint.dtype}"
        for i, (k, v, ks, vs, fk, fv) in enumerate(zip(self.keys, self.values, self.key_scales, self.value_scales,
                                                       self.full_keys, self.full_values, strict=True)):
            heads, dim = fk.shape[0], fk.shape[-1]
            if (k.dim() != 3 or v.dim() != 3 or fk.dim() != 3 or fk.shape != fv.shape
                    or tuple(k.shape) != (heads, m, dim * key_bits // 8)
                    or tuple(v.shape) != (heads, m, dim * value_bits // 8) or fk.shape[1] != head + tail):
                raise ValueError(f"layer {i}: codes {tuple(k.shape)} / {tuple(v.shape)} and full entries "
                                 f"{tuple(fk.shape)} / {tuple(fv.shape)} do not hold {self.kept_tokens} tokens "
                                 f"({head} sinks, {tail} recent in full precision)")
            if str(k.dtype) != "torch.uint8" or v.dtype != k.dtype or str(fk.dtype) != dtype or fv.dtype != fk.dtype:
                raise ValueError(f"layer {i}: codes must be uint8 and full entries {self.fingerprint.dtype}, got "
                                 f"{k.dtype}/{v.dtype}, {fk.dtype}/{fv.dtype}")
            groups = -(-m // self.compression.group)
            if (tuple(ks.shape) != (2, heads, groups, dim)
                    or tuple(vs.shape) != (2, heads, m, dim // value_group(dim, self.compression.group))
                    or str(ks.dtype) != "torch.float16" or vs.dtype != ks.dtype):
                raise ValueError(f"layer {i}: scales {tuple(ks.shape)} / {tuple(vs.shape)} {ks.dtype} do not fit "
                                 f"{m} quantised entries of {heads} heads x {dim} channels")

    def _check_scales(self, quantized: bool) -> None:
        if not quantized:
            if self.key_scales is not None or self.value_scales is not None:
                raise ValueError("scales are only for int8 payloads")
            return
        if self.key_scales is None or self.value_scales is None or not (
            len(self.key_scales) == len(self.value_scales) == len(self.keys)
        ):
            raise ValueError("an int8 payload needs key and value scales for every layer")
        for i, (k, ks, vs) in enumerate(zip(self.keys, self.key_scales, self.value_scales, strict=True)):
            heads, kept, dim = k.shape
            if tuple(ks.shape) != (heads, 1, dim) or tuple(vs.shape) != (heads, kept, 1):
                raise ValueError(f"layer {i}: scales {tuple(ks.shape)} / {tuple(vs.shape)} do not fit keys {tuple(k.shape)}")
            if ks.dtype != vs.dtype or str(ks.dtype) != "torch.float32":
                raise ValueError(f"layer {i}: scales must be float32, got {ks.dtype}/{vs.dtype}")

    def _check_positions(self, n: int) -> None:
        p = self.positions
        if (p is None) != (self.compression.select == "none"):
            raise ValueError(f"positions must be given exactly when tokens were selected ({self.compression.method})")
        if p is None:
            return
        heads = self.keys[0].shape[0]
        if p.dim() != 3 or tuple(p.shape[:2]) != (len(self.keys), heads) or p.is_floating_point():
            raise ValueError(f"positions {tuple(p.shape)} {p.dtype} must be integers [layers, kv_heads, kept]")
        if p.shape[-1] and (int(p.min()) < 0 or int(p.max()) >= n or not bool((p[..., 1:] > p[..., :-1]).all())):
            raise ValueError(f"positions must be strictly increasing per layer and head, within 0..{n - 1}")

    @property
    def num_tokens(self) -> int:
        """Tokens of the prefix (kept or not): the position a continuation starts at."""
        return len(self.token_ids)

    @property
    def kept_tokens(self) -> int:
        """Entries per layer and head actually cached (``num_tokens`` unless tokens were selected)."""
        return self.num_tokens if self.positions is None else int(self.positions.shape[-1])

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def to(self, device: str) -> KVPayload:
        """The same payload with its tensors on ``device`` (itself when they are already there); positions stay on
        the CPU (they index, they are not computed with)."""
        if str(self.keys[0].device) == device or (device == "cuda" and self.keys[0].device.type == "cuda"):
            return self

        def move(ts: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, ...] | None:
            return None if ts is None else tuple(t.to(device) for t in ts)

        return dataclasses.replace(self, keys=move(self.keys), values=move(self.values),  # type: ignore[arg-type]
                                   key_scales=move(self.key_scales), value_scales=move(self.value_scales),
                                   full_keys=move(self.full_keys), full_values=move(self.full_values))

    def dense(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Per layer ``(keys, values)`` in the fingerprint's dtype: the tensors themselves, or new dequantised ones
        for a quantised one (int8: ``int8 * scale``; low-bit: ``code * scale + minimum`` between the
        full-precision sinks and residual window), dequantised in float32 and cast to the fingerprint's dtype."""
        if self.key_scales is None or self.value_scales is None:
            return tuple(zip(self.keys, self.values, strict=True))
        import torch

        dtype = getattr(torch, self.fingerprint.dtype)
        if self.compression.quantize in LOWBIT:
            assert self.full_keys is not None and self.full_values is not None
            key_bits, value_bits = LOWBIT[self.compression.quantize]
            head, _ = lowbit_split(self.compression, self.kept_tokens)
            out = []
            for k, v, ks, vs, fk, fv in zip(self.keys, self.values, self.key_scales, self.value_scales,
                                            self.full_keys, self.full_values, strict=True):
                dim = fk.shape[-1]
                mk = dequantize_keys(k, ks, key_bits, dim, self.compression.group).to(dtype)
                mv = dequantize_values(v, vs, value_bits, dim).to(dtype)
                out.append((torch.cat([fk[:, :head], mk, fk[:, head:]], dim=1),
                            torch.cat([fv[:, :head], mv, fv[:, head:]], dim=1)))
            return tuple(out)
        return tuple(
            ((k.float() * ks).to(dtype), (v.float() * vs).to(dtype))
            for k, v, ks, vs in zip(self.keys, self.values, self.key_scales, self.value_scales, strict=True)
        )


def lowbit_split(compression: KVCompression, kept: int) -> tuple[int, int]:
    """How many of ``kept`` entries a low-bit payload keeps in full precision at the front (the first
    ``sink``: attention sinks) and at the back (the last ``recent``: the residual window, as KIVI keeps the most
    recent tokens unquantised); the entries between them are quantised."""
    head = min(compression.sink, kept)
    return head, min(compression.recent, kept - head)


def value_group(dim: int, group: int) -> int:
    """Channels per value group: ``group`` when it divides ``dim``, else the whole head (one group per token)."""
    return group if group <= dim and dim % group == 0 else dim


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit codes (uint8 ``[..., dim]``, ``dim * bits`` divisible by 8) packed into uint8
    ``[..., dim * bits / 8]``, the first code in the lowest bits."""
    per = 8 // bits
    grouped = codes.reshape(*codes.shape[:-1], codes.shape[-1] // per, per)
    out = grouped[..., 0].clone()
    for j in range(1, per):
        out |= grouped[..., j] << (bits * j)
    return out


def unpack_codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of :func:`pack_codes`: uint8 ``[..., dim]``."""
    import torch

    per = 8 // bits
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * j)) & mask for j in range(per)]
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], dim)


def dequantize_keys(packed: torch.Tensor, scales: torch.Tensor, bits: int, dim: int, group: int) -> torch.Tensor:
    """Float32 ``[heads, m, dim]`` keys from codes and per-channel ``(scale, minimum)`` per group of tokens."""
    codes = unpack_codes(packed, bits, dim).float()
    m = codes.shape[1]
    scale = scales[0].float().repeat_interleave(group, dim=1)[:, :m]
    low = scales[1].float().repeat_interleave(group, dim=1)[:, :m]
    return codes * scale + low


def dequantize_values(packed: torch.Tensor, scales: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Float32 ``[heads, m, dim]`` values from codes and per-token ``(scale, minimum)`` per group of channels."""
    codes = unpack_codes(packed, bits, dim).float()
    per = dim // scales.shape[-1]
    return codes * scales[0].float().repeat_interleave(per, dim=-1) + scales[1].float().repeat_interleave(per, dim=-1)


def payload_nbytes(payload: KVPayload) -> int:
    """Bytes ``payload`` holds in RAM (tensors, scales, positions and token ids): the unit of the in-RAM budget."""
    tensors = [*payload.keys, *payload.values, *(payload.key_scales or ()), *(payload.value_scales or ()),
               *(payload.full_keys or ()), *(payload.full_values or ())]
    positions = 0 if payload.positions is None else payload.positions.nbytes
    return sum(t.nbytes for t in tensors) + positions + 8 * payload.num_tokens


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
        tensors[f"layers.{i}.keys"] = k.cpu().contiguous()
        tensors[f"layers.{i}.values"] = v.cpu().contiguous()
        if payload.key_scales is not None and payload.value_scales is not None:
            tensors[f"layers.{i}.key_scales"] = payload.key_scales[i].cpu().contiguous()
            tensors[f"layers.{i}.value_scales"] = payload.value_scales[i].cpu().contiguous()
        if payload.full_keys is not None and payload.full_values is not None:
            tensors[f"layers.{i}.full_keys"] = payload.full_keys[i].cpu().contiguous()
            tensors[f"layers.{i}.full_values"] = payload.full_values[i].cpu().contiguous()
    tensors["token_ids"] = torch.tensor(payload.token_ids, dtype=torch.int64)
    if payload.positions is not None:
        tensors["positions"] = payload.positions.cpu().to(torch.int32).contiguous()
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
        "kept_tokens": str(payload.kept_tokens),
        "compression": payload.compression.model_dump_json(),
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
    name = shown(ref.path)  # errors name the file from the data dir's blobs/ on, never the absolute path
    payload = _parse(data, name=name)
    check_fingerprint(payload.fingerprint, expected, what=f"{_WHAT} {name}")
    return payload


def _parse(data: bytes, *, name: str) -> KVPayload:
    """Parse the bytes of a payload file (integrity-checked by the caller); ``name`` is used in errors."""
    from pydantic import ValidationError as PydanticValidationError
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
        compression = _NO_COMPRESSION
        if meta["format_version"] != "1":
            compression = KVCompression.model_validate_json(meta["compression"])
        quantized = compression.quantize != "none"
        lowbit = compression.quantize in LOWBIT
        payload = KVPayload(
            fingerprint=fingerprint,
            memory_messages=memory_messages,
            token_ids=token_ids,
            keys=tuple(tensors[f"layers.{i}.keys"] for i in range(num_layers)),
            values=tuple(tensors[f"layers.{i}.values"] for i in range(num_layers)),
            exact=meta["exact"] == "true",
            positions=tensors["positions"] if compression.select != "none" else None,
            compression=compression,
            key_scales=tuple(tensors[f"layers.{i}.key_scales"] for i in range(num_layers)) if quantized else None,
            value_scales=tuple(tensors[f"layers.{i}.value_scales"] for i in range(num_layers)) if quantized else None,
            full_keys=tuple(tensors[f"layers.{i}.full_keys"] for i in range(num_layers)) if lowbit else None,
            full_values=tuple(tensors[f"layers.{i}.full_values"] for i in range(num_layers)) if lowbit else None,
        )
        if meta["format_version"] != "1" and payload.kept_tokens != int(meta["kept_tokens"]):
            raise ValueError(f"header says {meta['kept_tokens']} kept tokens, the tensors hold {payload.kept_tokens}")
        return payload
    except (SafetensorError, KeyError, ValueError, TypeError, RecursionError, PydanticValidationError) as exc:
        raise CorruptPayload(f"{_WHAT} {name} is malformed: {exc}", path=name) from exc


def _read_metadata(data: bytes, name: str) -> dict[str, str]:
    required = (*_FINGERPRINT_FIELDS, "num_tokens", "num_layers", "exact", "memory_messages")
    try:
        return read_header(data, name, what=_WHAT, format=FORMAT, version=FORMAT_VERSION,
                           required=(*required, "kept_tokens", "compression"))
    except CorruptPayload as newer:
        # A version-1 file (written before compression) is an uncompressed payload; otherwise report the first error.
        try:
            return read_header(data, name, what=_WHAT, format=FORMAT, version=1, required=required)
        except CorruptPayload:
            raise newer from None
