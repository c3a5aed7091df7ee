"""Serving LoRA adapters on the shared base model: per-request activation, a loaded-adapter budget, no leakage.

**How an adapter is applied.** Merge-free, with forward hooks: inside :func:`adapter_applied`, each adapted linear
module of the base model gets a hook that adds ``scaling * B (A x)`` to its output; leaving the block removes every
hook (also on error). The base weights are never written and the module tree is never changed, so a request without
an adapter runs exactly the code and weights it would run if no adapter existed (tested: identical tokens). This was
chosen over peft's ``load_adapter``/``set_adapter`` on the shared model, which replaces the model's linear modules
with LoRA wrappers for good and keeps an adapter *active* between requests until someone switches it: a leak waits
for the first code path that forgets to switch. Measured by ``memos bench parametric`` on SmolLM2-135M with a
rank-8 adapter on all seven projections (docs/parametric.md; 2 shared CPU cores): applying and removing the 210
hooks 6.6 ms against 28 ms for a ``set_adapter`` switch; greedy decoding 11.0 tokens/s with the hooks, 9.1 with
peft's LoRA layers (15.1 without an adapter); the same tokens from both.

**One adapter at a time.** Hooks are keyed by model: activating a second adapter on a model that already has one
active raises :class:`~memos.errors.InvalidState` (it would add both updates silently). Callers serialise requests
on a model (``ModelService`` holds one lock for all tensor work).

**Loaded adapters.** :class:`AdapterPool` keeps at most ``budget`` adapters in RAM, ready to apply (factors already
cast to the model's dtype), keyed by file path and sha256; loading one more drops the least recently used. A miss
loads from disk, which checks size, sha256 and the base-model fingerprint every time (``memos.cubes.parametric``).

**KV caches and adapters.** An activation payload's keys and values were computed by the base model; the adapter
changes the projections that produced them (``v_proj``, ``q_proj``...), so a cached prefix is not what the adapted
model would compute. :func:`generate_with_adapter` therefore never injects a cache under an adapter: it recomputes,
i.e. prefills the cache's memory messages as text with the adapter active (same tokens, exact, at the cost of the
prefill the cache would have saved). Without an adapter the cache is injected as usual.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memos.cubes.activation import check_fingerprint
from memos.cubes.parametric import AdapterPayload, load_adapter
from memos.errors import InvalidState, InvalidSyscall
from memos.types import Fingerprint, PayloadRef

if TYPE_CHECKING:
    import torch

    from memos.cubes.activation import KVPayload
    from memos.models.host import GenerationResult, ModelHost

DEFAULT_BUDGET = 2

# Models with an adapter applied right now -> that adapter's name (for the error a second activation raises).
_ACTIVE: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_ACTIVE_LOCK = threading.Lock()


@dataclass(frozen=True, eq=False)
class ReadyAdapter:
    """An adapter prepared for one model: factors in the model's dtype, scaling folded into ``B``.

    Attributes:
        name: what errors and accounting call it (the payload's path).
        payload: the adapter as loaded (header, float32 factors).
        factors: per module path, ``(A [rank, in], scaling * B [out, rank])`` in the model's dtype.
        nbytes: bytes the prepared factors hold.
    """

    name: str
    payload: AdapterPayload
    factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    nbytes: int


def prepare(payload: AdapterPayload, model: Any, *, name: str) -> ReadyAdapter:
    """Check ``payload`` against ``model``'s modules and cast its factors for serving.

    Raises:
        InvalidSyscall: a module the adapter names is missing from the model, is not a linear layer, or has other
            input/output sizes than the factors (an adapter for another architecture that shares the fingerprint).
    """
    import torch

    dtype = next(model.parameters()).dtype
    scaling = payload.info.scaling
    factors = {}
    for path, (a, b) in payload.weights.items():
        try:
            module = model.get_submodule(path)
        except AttributeError as exc:
            raise InvalidSyscall(f"adapter {name} adapts {path}, which the model does not have") from exc
        if not isinstance(module, torch.nn.Linear) or (b.shape[0], a.shape[1]) != tuple(module.weight.shape):
            raise InvalidSyscall(
                f"adapter {name}: {path} is {type(module).__name__} {tuple(getattr(module, 'weight', a).shape)}, "
                f"the adapter's update is {(b.shape[0], a.shape[1])}"
            )
        # Scaling folded into B once, so each hook does two small matmuls and one add.
        factors[path] = (a.to(dtype).contiguous(), (b.float() * scaling).to(dtype).contiguous())
    nbytes = sum(a.nbytes + b.nbytes for a, b in factors.values())
    return ReadyAdapter(name=name, payload=payload, factors=factors, nbytes=nbytes)


@contextmanager
def adapter_applied(model: Any, adapter: ReadyAdapter | None) -> Iterator[None]:
    """Within the block, ``model`` computes with ``adapter`` added (nothing, for ``None``); after it, without.

    Raises:
        InvalidState: ``model`` already has an adapter applied (nested or concurrent activation).
    """
    if adapter is None:
        yield
        return
    with _ACTIVE_LOCK:
        if model in _ACTIVE:
            raise InvalidState(
                f"adapter {_ACTIVE[model]} is already applied to this model; requests on one model must be serialised"
            )
        _ACTIVE[model] = adapter.name
    handles = []
    try:
        for path, (a, b) in adapter.factors.items():
            handles.append(model.get_submodule(path).register_forward_hook(_lora_hook(a, b)))
        yield
    finally:
        for handle in handles:
            handle.remove()
        with _ACTIVE_LOCK:
            _ACTIVE.pop(model, None)


def active_adapter(model: Any) -> str | None:
    """The name of the adapter applied to ``model`` right now, or None."""
    with _ACTIVE_LOCK:
        return _ACTIVE.get(model)


def _lora_hook(a: torch.Tensor, b: torch.Tensor) -> Any:
    import torch.nn.functional as F

    def hook(_module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + F.linear(F.linear(args[0], a), b)

    return hook


class AdapterPool:
    """Adapters ready to apply to one model, at most ``budget`` at once, least recently used dropped first.

    Not thread-safe: the owner serialises calls (``ModelService`` does, with its lock).

    Raises:
        InvalidSyscall: on construction, when ``budget < 1``.
    """

    def __init__(self, model: Any, fingerprint: Fingerprint, budget: int = DEFAULT_BUDGET) -> None:
        if budget < 1:
            raise InvalidSyscall(f"the loaded-adapter budget must be at least 1, got {budget}")
        self._model = model
        self._fingerprint = fingerprint
        self.budget = budget
        self._ready: OrderedDict[tuple[str, str], ReadyAdapter] = OrderedDict()
        self.loads = 0
        self.evictions = 0

    def get(self, ref: PayloadRef) -> tuple[ReadyAdapter, list[str]]:
        """The adapter ``ref`` points to, ready to apply, and the paths of adapters dropped to make room.

        Raises:
            CorruptPayload: the file is missing, truncated, altered or malformed.
            FingerprintMismatch: the adapter was trained on another base model.
            InvalidSyscall: its modules do not fit this model (see :func:`prepare`).
        """
        key = (ref.path, ref.sha256)
        hit = self._ready.get(key)
        if hit is not None:
            self._ready.move_to_end(key)
            return hit, []
        ready = prepare(load_adapter(ref, self._fingerprint), self._model, name=ref.path)
        self.loads += 1
        evicted = []
        # Eviction order: least recently used first, until the new one fits the budget.
        while len(self._ready) >= self.budget:
            (old_path, _), _ = self._ready.popitem(last=False)
            evicted.append(old_path)
            self.evictions += 1
        self._ready[key] = ready
        return ready, evicted

    def forget(self, paths: Sequence[str]) -> None:
        """Drop these adapters from RAM (they were made stale, retrained or deleted)."""
        drop = set(paths)
        for key in [k for k in self._ready if k[0] in drop]:
            del self._ready[key]

    def usage(self) -> dict[str, int]:
        assert len(self._ready) <= self.budget, "the pool holds more adapters than its budget"
        return {
            "adapters": len(self._ready),
            "budget": self.budget,
            "bytes": sum(r.nbytes for r in self._ready.values()),
            "loads": self.loads,
            "evictions": self.evictions,
        }


def generate_with_adapter(
    host: ModelHost,
    messages: Sequence[Mapping[str, str]],
    *,
    adapter: ReadyAdapter | None,
    kv: KVPayload | None = None,
    max_new_tokens: int = 128,
    **sampling: Any,
) -> GenerationResult:
    """``host.generate`` with ``adapter`` applied for this call only (see the module docstring for ``kv``).

    With an adapter, ``kv``'s memory messages are prefilled as text (``cached_tokens`` is 0); without one, ``kv``
    is injected. ``sampling`` is passed through (``greedy``, ``temperature``, ``seed``).

    Raises:
        everything ``ModelHost.generate`` raises; InvalidState as :func:`adapter_applied`.
    """
    if adapter is None:
        return host.generate(messages, kv=kv, max_new_tokens=max_new_tokens, **sampling)
    prefix = []
    if kv is not None:
        # Refused as injection would refuse it, although only its text is used here.
        check_fingerprint(kv.fingerprint, host.fingerprint, what="the injected activation payload")
        prefix = [{"role": "system", "content": m} for m in kv.memory_messages]
    with adapter_applied(host.loaded.model, adapter):
        return host.generate([*prefix, *messages], max_new_tokens=max_new_tokens, **sampling)
