"""The model host: owns the language model and tokenizer and does all tensor work for activation memory.

A plain class (Ray is applied elsewhere, in one place). One instance per process; its methods are not thread-safe.

**Where memory goes in the prompt.** Memory is rendered as leading system messages, one per memory block, each
``MEMORY_HEADER + text`` (``"Relevant memory:\\n" + text``), followed by the caller's messages, through the model's own
chat template with ``add_generation_prompt=True``. For ChatML (SmolLM2) a block renders as
``<|im_start|>system\\nRelevant memory:\\n{text}<|im_end|>\\n``; since every block ends right before a special token,
the token ids of the blocks are a true prefix of the token ids of the whole prompt, which :meth:`ModelHost.generate`
verifies on every call. A caller's own system message comes after the memory blocks; with memory first, SmolLM2's
template no longer inserts its default system prompt. :func:`memory_messages` renders the same blocks as plain
messages, so a plaintext-memory prompt and an activation-memory prompt are the same text, token for token.

**Injected cache.** :meth:`ModelHost.generate` with ``kv=`` builds a fresh ``DynamicCache`` from the payload's
tensors (the cache concatenates onto them, so the payload is never written) and prefills only the tokens after the
prefix. Greedy decoding then yields the same tokens as prefilling the whole prompt (tested).

**Composition.** :meth:`ModelHost.compose` joins several payloads (memory blocks in order) into one:
``"rotate"`` concatenates the caches and re-rotates each later block's keys by its new offset (RoPE is a rotation
by ``position * inv_freq``, so rotating a cached key by ``offset * inv_freq`` moves it to ``position + offset``; values
carry no position). It costs milliseconds but is approximate: a later block's keys and values were computed without
attending to the earlier blocks (``exact=False``). ``"recompute"`` keeps the first payload's cache and prefills the
other blocks after it: exact (same as a full prefill), at the cost of prefilling all but the first block. Measured
quality of both against a full prefill is in docs/activation.md (``memos bench activation``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from memos.cubes.activation import KVPayload, check_fingerprint, load_kv
from memos.errors import CorruptPayload, InvalidSyscall, PayloadTooLarge
from memos.models.kv_compression import SCORED, attention_to_scores, compress
from memos.models.loader import LoadedModel, ModelSpec, configure_threads, load_model
from memos.types import Fingerprint, KVCompression, PayloadRef

if TYPE_CHECKING:
    import torch

MEMORY_HEADER = "Relevant memory:\n"
ComposeMethod = Literal["rotate", "recompute"]
_ROLES = frozenset({"system", "user", "assistant"})
_NO_COMPRESSION = KVCompression()
# Queries per eager-attention chunk when scoring tokens: 64 x 2048 keys x 9 heads x 30 layers x 4 B = 141 MB of weights.
_SCORE_CHUNK = 64
# RoPE variants whose angle is position * a fixed inv_freq (scaling folded into inv_freq or applied once to cos/sin),
# so that a further rotation by offset * inv_freq lands exactly on position + offset.
_STATIC_ROPE = frozenset({"default", "linear", "llama3", "yarn"})


def memory_messages(texts: Sequence[str]) -> list[dict[str, str]]:
    """The system messages that carry ``texts`` as memory, in order: the rendering every memory path must use."""
    return [{"role": "system", "content": MEMORY_HEADER + text} for text in texts]


@dataclass(frozen=True)
class GenerationResult:
    """What :meth:`ModelHost.generate` produced and how long it took.

    Attributes:
        text: the decoded new tokens, special tokens removed.
        token_ids: the new tokens, without the stop token.
        finish_reason: ``"stop"`` (the model ended its turn) or ``"length"`` (``max_new_tokens`` reached).
        prompt_tokens: tokens in the whole prompt, cached prefix included.
        cached_tokens: tokens taken from the injected cache (0 without one).
        ttft_s: seconds from the call to the first new token (rendering, tokenising, cache copy, prefill).
        total_s: seconds for the whole call.
    """

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    total_s: float


class ModelHost:
    """Owns one causal LM and its tokenizer: builds, composes and injects KV caches, and generates.

    Raises:
        ModelUnavailable: on construction, when the model cannot be loaded (see :func:`load_model`).
    """

    def __init__(self, spec: ModelSpec | None = None) -> None:
        import torch
        from transformers import DynamicCache

        self._torch = torch
        self._dynamic_cache = DynamicCache
        self.spec = spec or ModelSpec()
        # Threads are a process-wide setting: the host owns its process's compute, so it sets them.
        self.num_threads = configure_threads(self.spec.num_threads)
        self.loaded: LoadedModel = load_model(self.spec)
        #: Where the model runs ("cpu", "cuda", "cuda:<n>"): inputs and injected caches are moved there.
        self.device = self.loaded.device
        self._model = self.loaded.model
        self._tokenizer = self.loaded.tokenizer
        self._max_positions = int(getattr(self._model.config, "max_position_embeddings", 0) or 1 << 31)
        stop = self._model.generation_config.eos_token_id
        stop = [stop] if isinstance(stop, int) else list(stop or [])
        self._stop_ids = frozenset([*stop, self._tokenizer.eos_token_id]) - {None}
        added = getattr(self._tokenizer, "added_tokens_decoder", {}) or {}
        self._special_strings = tuple(sorted(
            {str(t) for t in self._tokenizer.all_special_tokens} | {str(t) for t in added.values() if getattr(t, "special", False)},
            key=len, reverse=True,
        ))

    @property
    def fingerprint(self) -> Fingerprint:
        return self.loaded.fingerprint

    @property
    def context_length(self) -> int:
        """The most positions the model takes (its config's ``max_position_embeddings``)."""
        return self._max_positions

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` on its own (no chat template, no special tokens added)."""
        return len(self._encode(text))

    def memory_tokens(self, texts: Sequence[str]) -> int:
        """Tokens that ``texts`` take as memory blocks at the front of a prompt (what their cache holds)."""
        return len(self._encode(self._render(memory_messages(texts), generation_prompt=False)))

    def build_kv(self, text: str | Sequence[str],
                 compression: KVCompression | str | Mapping[str, Any] | None = None) -> KVPayload:
        """The KV cache of ``text`` as one memory block (or of several texts as consecutive blocks, one prefill),
        exactly as :meth:`generate` will place it in a prompt, compressed as ``compression`` says (default none:
        the full cache, what a prefill computes).

        The attention-based selections (``heavy_hitter``, ``snapkv``) score tokens with the prefill's own attention
        weights: the scored part of the prefill runs with eager attention (SDPA does not return weights) in chunks of
        ``_SCORE_CHUNK`` queries, so its memory stays ``layers x heads x chunk x tokens`` floats.

        Raises:
            PayloadTooLarge: the block does not fit the model's context (or its sliding window).
            InvalidSyscall: no texts, or a malformed compression.
        """
        spec = compression_spec(compression)
        payload, scores = self.prefill_for(text, spec)
        return compress(payload, spec, scores)

    def prefill_for(self, text: str | Sequence[str], compression: KVCompression) -> tuple[KVPayload, torch.Tensor | None]:
        """The uncompressed cache of ``text`` (as :meth:`build_kv` renders it) and the attention scores
        ``compression``'s selection needs, ``[layers, kv_heads, tokens]`` (None for the unscored ones): the costly
        half of :meth:`build_kv`; ``memos.models.kv_compression.compress`` does the rest.

        Raises:
            PayloadTooLarge / InvalidSyscall: as :meth:`build_kv`.
        """
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise InvalidSyscall("build_kv needs at least one text")
        blocks = memory_messages(texts)
        ids = self._encode(self._render(blocks, generation_prompt=False))
        self._check_fits(len(ids), "the memory block")
        messages = tuple(b["content"] for b in blocks)
        if compression.select not in SCORED:
            return self._extend(None, ids, messages, exact=True), None
        return self._prefill_scored(ids, messages, compression)

    def load_kv(self, ref: PayloadRef) -> KVPayload:
        """Load a stored payload for this model.

        Raises:
            CorruptPayload: the file is missing, truncated, altered or malformed.
            FingerprintMismatch: the payload was built for another model.
        """
        return load_kv(ref, self.fingerprint)

    def compose(self, payloads: Sequence[KVPayload], *, method: ComposeMethod = "recompute") -> KVPayload:
        """One payload holding ``payloads``' memory blocks in order (see the module docstring for the methods).

        Raises:
            InvalidSyscall: no payloads, an unknown method, or ``"rotate"`` on a model whose positions are not a
                static RoPE rotation.
            FingerprintMismatch: a payload was built for another model.
            PayloadTooLarge: the blocks together do not fit the model's context.
        """
        if not payloads:
            raise InvalidSyscall("compose needs at least one payload")
        for i, payload in enumerate(payloads):
            check_fingerprint(payload.fingerprint, self.fingerprint, what=f"payload {i} to compose")
        self._check_fits(sum(p.num_tokens for p in payloads), "the composed memory")
        if len(payloads) == 1:
            return payloads[0]
        messages = tuple(m for p in payloads for m in p.memory_messages)
        if method == "recompute":
            rest = [t for p in payloads[1:] for t in p.token_ids]
            return self._extend(payloads[0], rest, messages, exact=payloads[0].exact)
        if method == "rotate":
            return self._rotate_concat(payloads, messages)
        raise InvalidSyscall(f"unknown compose method {method!r}; use 'rotate' or 'recompute'")

    def generate(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        kv: KVPayload | None = None,
        max_new_tokens: int = 128,
        greedy: bool = True,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> GenerationResult:
        """Answer ``messages`` (``{"role", "content"}`` dicts) with ``kv``'s memory blocks in front of them.

        With ``kv``, the prompt is ``kv.memory_messages`` as system messages, then ``messages``; only the tokens
        after the cached prefix are prefilled. ``kv`` is not modified. Without ``greedy``, tokens are sampled at
        ``temperature`` from a generator seeded with ``seed``.

        Raises:
            InvalidSyscall: malformed messages, ``max_new_tokens < 1`` or ``temperature <= 0`` when sampling.
            FingerprintMismatch: ``kv`` was built for another model.
            CorruptPayload: ``kv``'s token ids are not the prefix its messages render to with this tokenizer.
            PayloadTooLarge: the prompt plus ``max_new_tokens`` exceeds the model's context.
        """
        torch = self._torch
        started = time.perf_counter()
        _check_messages(messages)
        if max_new_tokens < 1 or (not greedy and temperature <= 0):
            raise InvalidSyscall("max_new_tokens must be >= 1 and temperature > 0 when sampling")
        prefix: list[dict[str, str]] = []
        if kv is not None:
            check_fingerprint(kv.fingerprint, self.fingerprint, what="the injected activation payload")
            prefix = [{"role": "system", "content": m} for m in kv.memory_messages]
        ids = self._encode(self._render([*prefix, *messages], generation_prompt=True))
        cached = 0 if kv is None else kv.num_tokens
        if kv is not None and tuple(ids[:cached]) != kv.token_ids:
            raise CorruptPayload(
                "the injected payload's token ids are not the prefix its memory messages render to with this model's "
                "tokenizer and chat template; rebuild it",
                model_id=self.fingerprint.model_id,
            )
        self._check_fits(len(ids) + max_new_tokens, "the prompt plus max_new_tokens")
        generator = None if greedy or seed is None else torch.Generator().manual_seed(seed)
        new: list[int] = []
        finish: Literal["stop", "length"] = "length"
        ttft = 0.0
        with torch.inference_mode():
            cache = self._cache_of(kv)
            step = ids[cached:]
            # Explicit positions: a compressed cache holds fewer entries than the tokens it covers, and the next
            # token's RoPE position is the prompt's length, not the cache's.
            position = cached
            for i in range(max_new_tokens):
                out = self._model(
                    input_ids=self._ids(step), position_ids=self._positions(position, len(step)),
                    past_key_values=cache, use_cache=True, logits_to_keep=1,
                )
                position += len(step)
                token = self._pick(out.logits[0, -1], greedy, temperature, generator)
                if i == 0:
                    ttft = time.perf_counter() - started
                if token in self._stop_ids:
                    finish = "stop"
                    break
                new.append(token)
                step = [token]
        return GenerationResult(
            text=self._tokenizer.decode(new, skip_special_tokens=True),
            token_ids=tuple(new),
            finish_reason=finish,
            prompt_tokens=len(ids),
            cached_tokens=cached,
            ttft_s=ttft,
            total_s=time.perf_counter() - started,
        )

    # ------------------------------------------------------------------------------------------------ internals

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return self._torch.tensor([list(ids)], device=self.device)

    def _positions(self, start: int, count: int) -> torch.Tensor:
        return self._torch.arange(start, start + count, device=self.device)[None]

    def _encode(self, text: str) -> list[int]:
        # Rendered prompts already hold their special tokens; adding a BOS here would shift every position.
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render(self, messages: Sequence[Mapping[str, str]], *, generation_prompt: bool) -> str:
        safe = [{**m, "content": self._defang(m["content"])} for m in messages]
        return self._tokenizer.apply_chat_template(safe, tokenize=False, add_generation_prompt=generation_prompt)

    def _defang(self, text: str) -> str:
        """Special-token strings inside a message (a memory, a tool result) must not become control tokens: text
        holding ``<|im_end|>`` would otherwise close its message and inject a new turn. A zero-width joiner after the
        first character keeps the text readable and makes the tokenizer see ordinary characters."""
        for token in self._special_strings:
            if token in text:
                text = text.replace(token, token[0] + "\u2060" + token[1:])
        return text

    def _check_fits(self, tokens: int, what: str) -> None:
        if tokens > self._max_positions:
            raise PayloadTooLarge(
                f"{what} needs {tokens} positions; the model has {self._max_positions}",
                tokens=tokens,
                limit=self._max_positions,
            )

    def _cache_of(self, kv: KVPayload | None) -> Any:
        """A fresh DynamicCache holding ``kv`` (empty without one). DynamicCache concatenates onto an empty tensor
        at construction, so it owns a copy and generation never writes to ``kv``'s tensors."""
        if kv is None:
            return self._dynamic_cache(config=self._model.config)
        data = [(k.unsqueeze(0).to(self.device), v.unsqueeze(0).to(self.device)) for k, v in kv.dense()]
        return self._dynamic_cache(ddp_cache_data=data, config=self._model.config)

    def _extend(self, base: KVPayload | None, ids: Sequence[int], messages: tuple[str, ...], *, exact: bool) -> KVPayload:
        """Prefill ``ids`` after ``base``'s cache (or from position 0) and return the joint payload (uncompressed
        tensors; a compressed ``base`` contributes its kept entries at their recorded positions)."""
        torch = self._torch
        start = base.num_tokens if base else 0
        with torch.inference_mode():
            cache = self._cache_of(base)
            self._model(input_ids=self._ids(ids), position_ids=self._positions(start, len(ids)),
                        past_key_values=cache, use_cache=True, logits_to_keep=1)
        return self._payload_of(cache, base, ids, messages, exact=exact)

    def _payload_of(self, cache: Any, base: KVPayload | None, ids: Sequence[int], messages: tuple[str, ...], *,
                    exact: bool) -> KVPayload:
        token_ids = (base.token_ids if base else ()) + tuple(ids)
        kept = (base.kept_tokens if base else 0) + len(ids)
        for i, layer in enumerate(cache.layers):
            if layer.keys.shape[-2] != kept:
                raise PayloadTooLarge(
                    f"layer {i} keeps {layer.keys.shape[-2]} of {len(token_ids)} tokens (sliding window); "
                    "such a memory block cannot be cached whole",
                    tokens=len(token_ids),
                )
        positions = None
        compression = _NO_COMPRESSION
        if base is not None and base.positions is not None:
            torch = self._torch
            start = base.num_tokens
            new = torch.arange(start, start + len(ids), dtype=base.positions.dtype)
            positions = torch.cat([base.positions, new.expand(*base.positions.shape[:2], len(ids))], dim=-1)
            # The joint tensors are dense floats; the record keeps the selection that decided the base's entries.
            compression = base.compression.model_copy(update={"quantize": "none"})
        return KVPayload(
            fingerprint=self.fingerprint,
            memory_messages=messages,
            token_ids=token_ids,
            keys=tuple(layer.keys[0] for layer in cache.layers),
            values=tuple(layer.values[0] for layer in cache.layers),
            exact=exact and (base is None or base.exact),
            positions=positions,
            compression=compression,
        )

    def _prefill_scored(self, ids: Sequence[int], messages: tuple[str, ...],
                        spec: KVCompression) -> tuple[KVPayload, torch.Tensor]:
        """Prefill ``ids`` and return the full payload and the attention scores ``spec``'s selection needs,
        ``[layers, kv_heads, tokens]``: H2O sums the attention of every query, SnapKV that of the last ``observe``."""
        torch = self._torch
        n = len(ids)
        first_scored = max(n - spec.observe, 0) if spec.select == "snapkv" else 0
        kv_heads = int(getattr(self._model.config, "num_key_value_heads", None) or self._model.config.num_attention_heads)
        scores: torch.Tensor | None = None
        with torch.inference_mode():
            cache = self._cache_of(None)
            if first_scored:
                self._model(input_ids=self._ids(ids[:first_scored]), past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
            with self._eager_attention():
                for start in range(first_scored, n, _SCORE_CHUNK):
                    chunk = list(ids[start:start + _SCORE_CHUNK])
                    out = self._model(input_ids=self._ids(chunk), past_key_values=cache, use_cache=True,
                                      logits_to_keep=1, output_attentions=True)
                    # Each chunk's queries see keys 0..start+len(chunk)-1; later keys got no attention from them.
                    part = attention_to_scores([a[0] for a in out.attentions], kv_heads)
                    part = torch.nn.functional.pad(part, (0, n - part.shape[-1]))
                    scores = part if scores is None else scores + part
        assert scores is not None
        return self._payload_of(cache, None, ids, messages, exact=True), scores

    @contextmanager
    def _eager_attention(self) -> Iterator[None]:
        """Run the model with eager attention inside the block (it returns attention weights), then restore."""
        previous = self._model.config._attn_implementation
        self._model.set_attn_implementation("eager")
        try:
            yield
        finally:
            self._model.set_attn_implementation(previous)

    def _rotate_concat(self, payloads: Sequence[KVPayload], messages: tuple[str, ...]) -> KVPayload:
        torch = self._torch
        inv_freq = self._rope_inv_freq()
        keys: list[list[torch.Tensor]] = [[] for _ in range(payloads[0].num_layers)]
        values: list[list[torch.Tensor]] = [[] for _ in range(payloads[0].num_layers)]
        positions: list[torch.Tensor] = []
        offset = 0
        for payload in payloads:
            # float64 angles: offset * inv_freq reaches thousands of radians, where float32 loses ~1e-3 rad.
            angles = offset * inv_freq.double()
            cos = torch.cat([angles.cos(), angles.cos()]).float().to(payload.keys[0].device)
            sin = torch.cat([angles.sin(), angles.sin()]).float().to(payload.keys[0].device)
            for layer, (k, v) in enumerate(payload.dense()):
                keys[layer].append(_rotate(k, cos, sin) if offset else k)
                values[layer].append(v)
            own = payload.positions
            if own is None:
                heads = payload.keys[0].shape[0]
                own = torch.arange(payload.num_tokens).expand(payload.num_layers, heads, payload.num_tokens)
            positions.append(own.to(torch.int32) + offset)
            offset += payload.num_tokens
        selected = [p for p in payloads if p.positions is not None]
        return KVPayload(
            fingerprint=self.fingerprint,
            memory_messages=messages,
            token_ids=tuple(t for p in payloads for t in p.token_ids),
            keys=tuple(torch.cat(parts, dim=1) for parts in keys),
            values=tuple(torch.cat(parts, dim=1) for parts in values),
            exact=False,
            positions=torch.cat(positions, dim=-1) if selected else None,
            compression=selected[0].compression.model_copy(update={"quantize": "none"}) if selected else _NO_COMPRESSION,
        )

    def _rope_inv_freq(self) -> torch.Tensor:
        config = self._model.config
        rope_type = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
        rotary = getattr(self._model.get_decoder(), "rotary_emb", None)
        inv_freq = getattr(rotary, "inv_freq", None)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if rope_type not in _STATIC_ROPE or inv_freq is None or 2 * inv_freq.numel() != head_dim:
            raise InvalidSyscall(
                f"compose(method='rotate') needs full-head RoPE with a static frequency table (this model: rope_type "
                f"{rope_type!r}); use method='recompute'"
            )
        return inv_freq.detach().float().cpu()

    def _pick(self, logits: torch.Tensor, greedy: bool, temperature: float, generator: Any) -> int:
        torch = self._torch
        if greedy:
            return int(torch.argmax(logits).item())
        # On the CPU: the seeded generator is a CPU generator, whatever device the model runs on.
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator).item())


def _rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate cached keys ``[heads, tokens, head_dim]`` by one fixed angle per frequency (HF's rotate_half layout)."""
    import torch

    k = keys.float()
    half = k.shape[-1] // 2
    rotated_half = torch.cat([-k[..., half:], k[..., :half]], dim=-1)
    return (k * cos + rotated_half * sin).to(keys.dtype)


def compression_spec(value: KVCompression | str | Mapping[str, Any] | None) -> KVCompression:
    """``value`` as a :class:`KVCompression` (None: no compression).

    Raises:
        InvalidSyscall: a malformed compression.
    """
    if value is None:
        return _NO_COMPRESSION
    try:
        return KVCompression.model_validate(value)
    except ValidationError as exc:
        raise InvalidSyscall(f"invalid compression {value!r}: {exc.errors()[0]['msg']}") from exc


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    if not messages:
        raise InvalidSyscall("generate needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise InvalidSyscall(
                f"message {i} must be {{'role': 'system'|'user'|'assistant', 'content': str}}, got {m!r:.200}"
            )
