"""KV-cache compression: token selection and int8 quantisation of an activation payload (pure torch).

The model host computes a block's full cache (and, for the attention-based selections, attention scores from the
prefill); :func:`compress` turns that into the stored payload. What each method keeps (docs/activation.md,
"Compression"):

- ``sink_window`` (StreamingLLM): the first ``sink`` tokens (the attention sinks: the chat template's
  ``<|im_start|>system`` and the memory header) and the most recent ``ceil(keep * n) - sink`` tokens. The same
  positions for every layer and head; needs no scores.
- ``heavy_hitter`` (H2O): per layer and key-value head, the tokens with the largest attention summed over every query
  of the prefill (and over the query heads sharing that key-value head), plus the ``sink`` first and ``recent`` last.
- ``snapkv`` (SnapKV): per layer and key-value head, the tokens with the largest attention from the block's last
  ``observe`` tokens (the observation window), average-pooled over ``pool`` neighbours so that a kept token keeps its
  neighbours, plus the ``sink`` first tokens and the observation window itself (at least ``recent`` last tokens).
- ``int4`` / ``int2`` / ``k8v4`` / ``k8v2`` (KIVI): asymmetric codes (``code * scale + minimum``) of 4 or 2 bits
  (``k8v4`` / ``k8v2``: 8-bit keys, 4- or 2-bit values), keys per channel in groups of ``group`` tokens, values per token in groups of ``group``
  channels, scale and minimum in float16 per group; the first ``sink`` and the last ``recent`` kept entries
  (attention sinks, residual window) stay in the model's dtype. On any selection's result.
- ``int8``: symmetric, keys per channel (one scale per head and channel over the kept tokens: key outliers are
  per channel) and values per token (one scale per head and token over the channels), as KIVI argues; on any
  selection's result.

Kept entries are gathered, never recomputed: a kept key keeps the RoPE rotation of its original position, and the
payload records those positions (``KVPayload.positions``) so that generation continues at the original length.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from memos.cubes.activation import LOWBIT, KVPayload, lowbit_split, pack_codes, value_group
from memos.types import KVCompression

if TYPE_CHECKING:
    import torch

#: Selections that need attention scores from the prefill.
SCORED = frozenset({"heavy_hitter", "snapkv"})


def kept_count(compression: KVCompression, n: int) -> int:
    """Tokens a selection keeps out of ``n``: ``ceil(keep * n)``, at least the always-kept ones, at most ``n``."""
    if compression.select == "none":
        return n
    return min(n, max(math.ceil(compression.keep * n), len(_always(compression, n))))


def _always(compression: KVCompression, n: int) -> list[int]:
    """Positions every layer and head keeps: the sinks and, for the scored methods, the recent tail."""
    tail = 0
    if compression.select == "heavy_hitter":
        tail = compression.recent
    elif compression.select == "snapkv":
        tail = max(compression.recent, compression.observe)
    head = list(range(min(compression.sink, n)))
    return sorted(set(head) | set(range(max(n - tail, 0), n)))


def select_positions(compression: KVCompression, n: int, layers: int, heads: int,
                     scores: torch.Tensor | None = None) -> torch.Tensor:
    """The original positions to keep, int64 ``[layers, heads, kept]``, increasing per layer and head.

    ``scores`` (float ``[layers, heads, n]``, larger = more important) is required for the scored selections and
    ignored otherwise.

    Raises:
        ValueError: ``select`` is ``"none"``, or scores are missing or of the wrong shape for a scored selection.
    """
    import torch

    if compression.select == "none":
        raise ValueError("select_positions needs a selection method")
    kept = kept_count(compression, n)
    if compression.select == "sink_window":
        sink = min(compression.sink, kept)
        row = torch.cat([torch.arange(sink), torch.arange(n - (kept - sink), n)])
        return row.expand(layers, heads, kept).clone()
    if scores is None or tuple(scores.shape) != (layers, heads, n):
        raise ValueError(f"{compression.select} needs scores [layers={layers}, heads={heads}, n={n}], "
                         f"got {None if scores is None else tuple(scores.shape)}")
    scores = scores.float().cpu()
    if compression.select == "snapkv" and compression.pool > 1:
        flat = scores.reshape(layers * heads, 1, n)
        scores = torch.nn.functional.avg_pool1d(flat, compression.pool, stride=1, padding=compression.pool // 2,
                                                count_include_pad=False).reshape(layers, heads, n)
    always = torch.tensor(_always(compression, n), dtype=torch.long)
    # Always-kept positions win the top-k: give them a score above any attention sum.
    scores = scores.clone()
    scores[..., always] = math.inf
    chosen = torch.topk(scores, kept, dim=-1).indices
    return chosen.sort(dim=-1).values


def attention_to_scores(attentions: list[torch.Tensor], kv_heads: int) -> torch.Tensor:
    """Sum attention weights ``[query_heads, queries, n]`` per layer over the queries and over the query heads
    that share a key-value head (grouped-query attention): float32 ``[layers, kv_heads, n]``."""
    import torch

    rows = []
    for a in attentions:
        heads, _, n = a.shape
        rows.append(a.float().sum(dim=1).reshape(kv_heads, heads // kv_heads, n).sum(dim=1))
    return torch.stack(rows)


def compress(payload: KVPayload, compression: KVCompression, scores: torch.Tensor | None = None) -> KVPayload:
    """``payload`` (an uncompressed cache) compressed as ``compression`` says; ``scores`` as in
    :func:`select_positions`. ``none`` returns ``payload`` itself.

    Raises:
        ValueError: ``payload`` is already compressed, or scores are missing for a scored selection.
    """
    import torch

    if not payload.compression.is_none:
        raise ValueError(f"payload is already compressed ({payload.compression.method})")
    if compression.is_none:
        return payload
    keys, values, positions = payload.keys, payload.values, None
    if compression.select != "none":
        heads = keys[0].shape[0]
        positions = select_positions(compression, payload.num_tokens, payload.num_layers, heads, scores)
        index = [p.to(k.device).unsqueeze(-1).expand(-1, -1, k.shape[-1]) for p, k in zip(positions, keys, strict=True)]
        keys = tuple(torch.gather(k, 1, i) for k, i in zip(keys, index, strict=True))
        values = tuple(torch.gather(v, 1, i) for v, i in zip(values, index, strict=True))
        positions = positions.to(torch.int32)
    key_scales = value_scales = full_keys = full_values = None
    if compression.quantize in LOWBIT:
        head, tail = lowbit_split(compression, keys[0].shape[1])
        quantized = [quantize_lowbit(k, v, *LOWBIT[compression.quantize], compression.group, head, tail)
                     for k, v in zip(keys, values, strict=True)]
        keys, values, key_scales, value_scales, full_keys, full_values = (
            tuple(q[j] for q in quantized) for j in range(6))
    elif compression.quantize == "int8":
        quantized = [quantize_int8(k, v) for k, v in zip(keys, values, strict=True)]
        keys = tuple(q[0] for q in quantized)
        values = tuple(q[1] for q in quantized)
        key_scales = tuple(q[2] for q in quantized)
        value_scales = tuple(q[3] for q in quantized)
    return dataclasses.replace(payload, keys=keys, values=values, exact=False, positions=positions,
                               compression=compression, key_scales=key_scales, value_scales=value_scales,
                               full_keys=full_keys, full_values=full_values)


def quantize_lowbit(keys: torch.Tensor, values: torch.Tensor, key_bits: int, value_bits: int, group: int, head: int,
                    tail: int) -> tuple[torch.Tensor, ...]:
    """KIVI-style quantisation of one layer's ``[heads, kept, dim]`` keys and values to ``key_bits`` and
    ``value_bits`` codes: the first ``head`` and last ``tail`` entries stay as they are; the others become
    asymmetric codes (``round((x - min) / scale)``, ``scale = (max - min) / (2**bits - 1)``), keys per channel over
    groups of ``group`` tokens, values per token over groups of ``group`` channels
    (:func:`~memos.cubes.activation.value_group`).

    Returns ``(packed keys, packed values, key scales, value scales, full keys, full values)`` as
    :class:`KVPayload` stores them; scale and minimum are rounded to float16 before the codes are computed, so the
    codes fit the stored scales."""
    import torch

    heads, kept, dim = keys.shape
    if (dim * min(key_bits, value_bits)) % 8:
        raise ValueError(f"head_dim {dim} cannot be packed at {min(key_bits, value_bits)} bits")
    full_keys = torch.cat([keys[:, :head], keys[:, kept - tail:]], dim=1).clone()
    full_values = torch.cat([values[:, :head], values[:, kept - tail:]], dim=1).clone()
    k, v = keys[:, head:kept - tail].float(), values[:, head:kept - tail].float()
    m = k.shape[1]

    def codes(x: torch.Tensor, axis: int, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        levels = (1 << bits) - 1
        low = x.amin(dim=axis, keepdim=True)
        scale = ((x.amax(dim=axis, keepdim=True) - low) / levels).clamp_min(1e-4)
        low, scale = low.half(), scale.half()
        q = ((x - low.float()) / scale.float()).round().clamp(0, levels).to(torch.uint8)
        return q, torch.stack([scale, low]).squeeze(axis + 1)

    groups = -(-m // group)
    # Keys: pad the token axis to whole groups by repeating the last token (it moves no group's min or max).
    padded = torch.cat([k, k[:, -1:].expand(heads, groups * group - m, dim)], dim=1) if m and groups * group > m else k
    qk, key_scales = codes(padded.reshape(heads, groups, group, dim), 2, key_bits)
    qk = qk.reshape(heads, groups * group, dim)[:, :m]
    vg = value_group(dim, group)
    qv, value_scales = codes(v.reshape(heads, m, dim // vg, vg), 3, value_bits)
    qv = qv.reshape(heads, m, dim)
    return pack_codes(qk, key_bits), pack_codes(qv, value_bits), key_scales, value_scales, full_keys, full_values


def quantize_int8(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Symmetric int8 of one layer's ``[heads, tokens, dim]`` keys (scale per head and channel) and values (scale
    per head and token): ``(int8 keys, int8 values, key scales [heads, 1, dim], value scales [heads, tokens, 1])``,
    scales float32, ``dequantised = int8 * scale``."""
    import torch

    k, v = keys.float(), values.float()
    key_scales = (k.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(1e-8)
    value_scales = (v.abs().amax(dim=2, keepdim=True) / 127.0).clamp_min(1e-8)
    qk = (k / key_scales).round().clamp(-127, 127).to(torch.int8)
    qv = (v / value_scales).round().clamp(-127, 127).to(torch.int8)
    return qk, qv, key_scales, value_scales

