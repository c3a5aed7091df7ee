"""What serving an adapter costs, measured: memos' forward hooks (``memos.models.adapters``) against peft's own
LoRA layers with ``set_adapter``, on the same factors. Used by ``memos bench parametric``; it is the evidence for
the serving choice documented in ``memos.models.adapters``."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

from memos.models.adapters import AdapterPool, adapter_applied, generate_with_adapter
from memos.models.host import ModelHost
from memos.types import PayloadRef

_QUESTION = "Where was Ilsa Dorn born? Answer in one sentence."
_NEW_TOKENS = 24
_TOGGLES = 100


def measure_serving_costs(host: ModelHost, ref: PayloadRef, *, repeats: int = 3) -> dict[str, Any]:
    """Load time, switch cost and greedy decoding speed of the adapter ``ref`` on ``host``, hooks against peft.

    peft runs on a private copy of the model (the shared one is never wrapped), with two adapters so that
    ``set_adapter`` really switches. Decoding speeds are medians of ``repeats`` runs of 24 new tokens.

    Raises:
        CorruptPayload / FingerprintMismatch: as ``AdapterPool.get``.
    """
    import peft
    import torch

    model = host.loaded.model
    pool = AdapterPool(model, host.fingerprint, budget=1)
    t = time.perf_counter()
    ready, _ = pool.get(ref)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(_TOGGLES):
        with adapter_applied(model, ready):
            pass
    hooks_switch_s = (time.perf_counter() - t) / _TOGGLES
    messages = [{"role": "user", "content": _QUESTION}]
    host.generate(messages, max_new_tokens=4)  # warm-up: the first calls pay allocator growth
    base_tps = _rate(lambda: len(host.generate(messages, max_new_tokens=_NEW_TOKENS).token_ids), repeats)
    hooks_reply = generate_with_adapter(host, messages, adapter=ready, max_new_tokens=_NEW_TOKENS)
    hooks_tps = _rate(
        lambda: len(generate_with_adapter(host, messages, adapter=ready, max_new_tokens=_NEW_TOKENS).token_ids),
        repeats,
    )

    info = ready.payload.info
    targets = sorted({m.rsplit(".", 1)[-1] for m in info.modules})
    lora = peft.LoraConfig(r=info.rank, lora_alpha=info.alpha, target_modules=targets)
    wrapped = peft.get_peft_model(copy.deepcopy(model), lora, adapter_name="a")
    wrapped.add_adapter("b", lora)
    with torch.no_grad():
        for name, module in wrapped.named_modules():
            path = name.removeprefix("base_model.model.")
            if path in ready.payload.weights and hasattr(module, "lora_A"):
                a, b = ready.payload.weights[path]
                module.lora_A["a"].weight.copy_(a)
                module.lora_B["a"].weight.copy_(b)
    wrapped.eval()
    t = time.perf_counter()
    for i in range(_TOGGLES):
        wrapped.set_adapter("ab"[i % 2])
    peft_switch_s = (time.perf_counter() - t) / _TOGGLES
    wrapped.set_adapter("a")
    tokenizer = host.loaded.tokenizer
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    stop = host.loaded.model.generation_config.eos_token_id

    def peft_tokens() -> list[int]:
        with torch.inference_mode():
            out = wrapped.generate(input_ids=ids, do_sample=False, max_new_tokens=_NEW_TOKENS, eos_token_id=stop,
                                   pad_token_id=stop)
        row = out[0, ids.shape[1] :].tolist()
        return row[: row.index(stop)] if stop in row else row

    peft_reply = peft_tokens()
    peft_tps = _rate(lambda: len(peft_tokens()), repeats)
    return {
        "adapter": ref.path,
        "load_s": load_s,
        "hooks_switch_ms": hooks_switch_s * 1e3,
        "peft_set_adapter_ms": peft_switch_s * 1e3,
        "decode_tokens_per_s": {"no_adapter": base_tps, "hooks": hooks_tps, "peft": peft_tps},
        "hooks_and_peft_same_tokens": list(hooks_reply.token_ids) == peft_reply,
        "repeats": repeats,
    }


def _rate(run: Callable[[], int], repeats: int) -> float:
    """Median tokens per second of ``run`` (which returns the tokens it produced)."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = run()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)
