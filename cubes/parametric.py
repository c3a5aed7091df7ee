"""Parametric MemCubes: a LoRA adapter distilled from plaintext memories, and its file format.

An :class:`AdapterPayload` is what distillation (``memos.models.distill``) produced: for each adapted linear module of
the base model, LoRA factors ``A`` ``[rank, in]`` and ``B`` ``[out, rank]`` whose product, scaled by
``alpha / rank``, is added to the module's output (``y = W x + (alpha / rank) * B A x``); the fingerprint of the base
model it was trained on; the exact memory versions it was distilled from; and how it was trained and how well it
did. It is immutable: a frozen dataclass whose tensors no code path writes to (serving casts them to the model's
dtype, which copies).

File format (``FORMAT = "memos.lora"``, ``FORMAT_VERSION = 1``), one safetensors file:

- tensors ``<module>.lora_A`` and ``<module>.lora_B`` per adapted module, ``<module>`` its dotted path in the base
  model (e.g. ``model.layers.0.self_attn.q_proj``), stored in the dtype they were trained in (float32);
- header metadata (strings): ``format``, ``format_version``, the fingerprint's ``model_id``, ``config_hash``,
  ``tokenizer_hash`` and ``dtype``, ``rank``, ``alpha``, and as JSON: ``modules`` (list), ``sources`` (list of
  ``{"id", "version"}``), ``config`` (the training config), ``loss_curve`` (list of ``[step, loss]``) and
  ``evaluation`` (recall with and without the adapter, locality; see ``memos.models.distill.Evaluation``).

:func:`save_adapter` writes atomically (``memos.cubes.blobs``) and returns a :class:`~memos.types.PayloadRef`
whose sha256 the kernel keeps outside the file. :func:`load_adapter` reads the file once, checks size, then sha256,
then parses the header of those verified bytes and checks the fingerprint, and only then materialises tensors.
:func:`adapter_info` returns the header alone (sources, config, evaluation) without torch. Nothing here unpickles:
safetensors is a JSON header plus raw tensor data.

torch and safetensors are imported lazily: the kernel imports this module (types, checks) without loading torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memos.cubes.activation import check_fingerprint
from memos.cubes.blobs import read_header, read_verified, shown, write_payload
from memos.errors import CorruptPayload
from memos.types import Fingerprint, MemoryRef, PayloadRef

if TYPE_CHECKING:
    import torch

FORMAT = "memos.lora"
FORMAT_VERSION = 1
_FINGERPRINT_FIELDS = ("model_id", "config_hash", "tokenizer_hash", "dtype")
_JSON_FIELDS = ("modules", "sources", "config", "loss_curve", "evaluation")
_WHAT = "adapter payload"


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter file's header: everything but the tensors.

    Attributes:
        fingerprint: the base model the adapter was trained on (and is only valid for).
        sources: the memory versions it was distilled from, in training order.
        rank: LoRA rank; alpha: LoRA alpha (the update is scaled by ``alpha / rank``).
        modules: dotted paths of the adapted linear modules of the base model.
        config: the training config, as JSON.
        loss_curve: ``(step, loss)`` of training, in step order.
        evaluation: what distillation measured (JSON; see ``memos.models.distill.Evaluation``).
    """

    fingerprint: Fingerprint
    sources: tuple[MemoryRef, ...]
    rank: int
    alpha: float
    modules: tuple[str, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    loss_curve: tuple[tuple[int, float], ...] = ()
    evaluation: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True, eq=False)
class AdapterPayload:
    """A LoRA adapter for the base model named by ``info.fingerprint``.

    Attributes:
        info: the header (fingerprint, sources, rank, alpha, modules, config, loss curve, evaluation).
        weights: per module of ``info.modules``, ``(A [rank, in], B [out, rank])``, floating point.

    Raises:
        ValueError: on construction, when there are no sources or modules, the modules do not match the weights,
            or a factor has the wrong shape or is not floating point.
    """

    info: AdapterInfo
    weights: Mapping[str, tuple[torch.Tensor, torch.Tensor]]

    def __post_init__(self) -> None:
        info = self.info
        if not info.sources:
            raise ValueError("an adapter needs at least one source memory")
        if info.rank < 1 or info.alpha <= 0:
            raise ValueError(f"rank must be >= 1 and alpha > 0, got rank {info.rank}, alpha {info.alpha}")
        if not info.modules or set(info.modules) != set(self.weights) or len(set(info.modules)) != len(info.modules):
            raise ValueError("info.modules must list each module of weights exactly once")
        for name, (a, b) in self.weights.items():
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != info.rank or b.shape[1] != info.rank:
                raise ValueError(
                    f"{name}: A {tuple(a.shape)} and B {tuple(b.shape)} are not [rank, in] and [out, rank] "
                    f"for rank {info.rank}"
                )
            if not (a.is_floating_point() and b.is_floating_point()):
                raise ValueError(f"{name}: LoRA factors must be floating point, got {a.dtype} and {b.dtype}")

    @property
    def fingerprint(self) -> Fingerprint:
        return self.info.fingerprint

    @property
    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.weights.values())


def save_adapter(payload: AdapterPayload, path: str) -> PayloadRef:
    """Write ``payload`` to ``path`` atomically (temp name, fsync, rename, fsync dir); return its reference.

    Raises:
        BackendError: the file cannot be written (nothing new is left at ``path`` in that case).
    """
    from safetensors.torch import save

    info = payload.info
    tensors: dict[str, Any] = {}
    for name in info.modules:
        a, b = payload.weights[name]
        tensors[f"{name}.lora_A"] = a.detach().contiguous()
        tensors[f"{name}.lora_B"] = b.detach().contiguous()
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        **{f: getattr(info.fingerprint, f) for f in _FINGERPRINT_FIELDS},
        "rank": str(info.rank),
        "alpha": repr(float(info.alpha)),
        "modules": json.dumps(list(info.modules)),
        "sources": json.dumps([s.model_dump() for s in info.sources]),
        "config": json.dumps(dict(info.config), sort_keys=True),
        "loss_curve": json.dumps([[int(s), float(v)] for s, v in info.loss_curve]),
        "evaluation": json.dumps(dict(info.evaluation), sort_keys=True),
    }
    return write_payload(path, save(tensors, metadata=metadata), what=_WHAT)


def load_adapter(ref: PayloadRef, expected: Fingerprint) -> AdapterPayload:
    """Load the adapter ``ref`` points to, for the base model whose fingerprint is ``expected``.

    Checks, in order: the file exists with ``ref.size_bytes`` bytes, its sha256 is ``ref.sha256``, its header is
    this format and version, its fingerprint equals ``expected``, and its tensors match the header.

    Raises:
        CorruptPayload: missing, truncated, altered or malformed file (the message names the file).
        FingerprintMismatch: a sound file trained on another base model (the message names the differing fields).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_verified(ref, what=_WHAT)
    info = _parse_info(data, shown(ref.path))
    check_fingerprint(info.fingerprint, expected, what=f"{_WHAT} {shown(ref.path)}")
    try:
        tensors = load(data)
        weights = {m: (tensors.pop(f"{m}.lora_A"), tensors.pop(f"{m}.lora_B")) for m in info.modules}
        if tensors:
            raise ValueError(f"tensors not named in the header: {sorted(tensors)[:5]}")
        return AdapterPayload(info=info, weights=weights)
    except (SafetensorError, KeyError, ValueError) as exc:
        raise CorruptPayload(f"{_WHAT} {shown(ref.path)} is malformed: {exc}", path=shown(ref.path)) from exc


def adapter_info(ref: PayloadRef) -> AdapterInfo:
    """The header of the adapter ``ref`` points to (size and sha256 checked; no fingerprint check, no torch).

    Raises:
        CorruptPayload: missing, truncated, altered or malformed file.
    """
    return _parse_info(read_verified(ref, what=_WHAT), shown(ref.path))


def _parse_info(data: bytes, name: str) -> AdapterInfo:
    """The header of a payload file's bytes (integrity-checked by the caller); ``name`` is used in errors."""
    meta = _read_metadata(data, name)
    try:
        parsed = {k: json.loads(meta[k]) for k in _JSON_FIELDS}
        return AdapterInfo(
            fingerprint=Fingerprint(**{f: meta[f] for f in _FINGERPRINT_FIELDS}),
            sources=tuple(MemoryRef.model_validate(s) for s in parsed["sources"]),
            rank=int(meta["rank"]),
            alpha=float(meta["alpha"]),
            modules=tuple(str(m) for m in parsed["modules"]),
            config=parsed["config"],
            loss_curve=tuple((int(s), float(v)) for s, v in parsed["loss_curve"]),
            evaluation=parsed["evaluation"],
        )
    except (KeyError, ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise CorruptPayload(f"{_WHAT} {name} has a malformed header: {exc}", path=name) from exc


def _read_metadata(data: bytes, name: str) -> dict[str, str]:
    return read_header(data, name, what=_WHAT, format=FORMAT, version=FORMAT_VERSION,
                       required=(*_FINGERPRINT_FIELDS, "rank", "alpha", *_JSON_FIELDS))
