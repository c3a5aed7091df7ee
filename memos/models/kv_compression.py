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

from memos.cubes.activation import KVPayload
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
    key_scales = value_scales = None
    if compression.quantize == "int8":
        quantized = [quantize_int8(k, v) for k, v in zip(keys, values, strict=True)]
        keys = tuple(q[0] for q in quantized)
        values = tuple(q[1] for q in quantized)
        key_scales = tuple(q[2] for q in quantized)
        value_scales = tuple(q[3] for q in quantized)
    return dataclasses.replace(payload, keys=keys, values=values, exact=False, positions=positions,
                               compression=compression, key_scales=key_scales, value_scales=value_scales)


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

