"""The model host as the kernel sees it (``memos.models.port.ModelPort``): a ``ModelHost`` plus the GPU and RAM
tiers of activation memory.

**Tiers.** Loaded KV payloads are kept in LRUs keyed by file path and sha256, each bounded in bytes (counted with
``payload_nbytes``, so a compressed payload costs its compressed size): the **GPU tier** (``gpu_budget_bytes``,
payloads on the model's device; only when the model runs on a GPU) above the **RAM tier** (``ram_budget_bytes``,
CPU copies) above the disk (the kernel's disk budget and demotion, separate). A payload in neither tier is loaded
from disk, which checks its size, sha256 and the model fingerprint every time, and enters the RAM tier; on a GPU
host it is then copied into the GPU tier. The tiers are inclusive: a payload evicted from the GPU tier (least
recently used first) is still in RAM, one evicted from RAM is still on disk; each tier keeps at least the payload
just used, even above its budget. Payloads are immutable: generation works on a fresh cache built from them.

**Several activation memories** are joined with ``ModelHost.compose`` (``compose_method``, default
``"recompute"``: exact, it prefills the blocks after the first; ``"rotate"``: RoPE re-rotation, cheap but approximate,
measured in docs/activation.md). A single one is injected exactly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from memos.config import Settings
from memos.models.host import ComposeMethod, ModelHost, memory_messages
from memos.models.loader import ModelSpec
from memos.models.port import ActivationBuilt, DistillStatus, Generation, KVBlock
from memos.types import Fingerprint, PayloadRef

DEFAULT_RAM_BUDGET = 256 * 1024 * 1024


DEFAULT_GPU_BUDGET = 1024 * 1024 * 1024


class Tier:
    """One LRU tier of loaded payloads: ``key -> (payload, nbytes)``, bounded by ``budget_bytes``.

    Not thread-safe (the service's lock guards it). Eviction order: least recently used first (``get`` and ``put``
    refresh), never the entry just put.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, str]) -> Any | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        self._entries.move_to_end(key)
        return hit[0]

    def put(self, key: tuple[str, str], payload: Any, nbytes: int) -> list[tuple[str, str]]:
        """Keep ``payload``; return the keys evicted to stay within the budget."""
        self.drop([key])
        self._entries[key] = (payload, nbytes)
        self.bytes += nbytes
        evicted = []
        while self.bytes > self.budget_bytes and len(self._entries) > 1:
            old_key, (_, old_bytes) = self._entries.popitem(last=False)
            self.bytes -= old_bytes
            evicted.append(old_key)
        return evicted

    def drop(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self.bytes -= entry[1]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._entries))


def open_model_service(settings: Settings, *, num_threads: int | None = None) -> ModelService:
    """The model service ``settings`` describe (its model must not be None).

    Raises:
        ModelUnavailable: the model cannot be loaded.
    """
    assert settings.model is not None, "open_model_service needs Settings.model"
    spec = ModelSpec(model=settings.model, dtype=settings.model_dtype, cache_dir=settings.model_cache_dir,
                     num_threads=num_threads, device=settings.model_device)
    return ModelService(spec, ram_budget_bytes=settings.activation_ram_bytes, compose_method=settings.compose_method,
                        adapter_budget=settings.loaded_adapters, gpu_budget_bytes=settings.activation_gpu_bytes)


class ModelService:
    """Thread-safe: one lock serialises tensor work (one model, one CPU pool)."""

    def __init__(
        self,
        spec: ModelSpec | None = None,
        *,
        host: ModelHost | None = None,
        ram_budget_bytes: int = DEFAULT_RAM_BUDGET,
        compose_method: ComposeMethod = "recompute",
        adapter_budget: int = 2,
        gpu_budget_bytes: int = DEFAULT_GPU_BUDGET,
    ) -> None:
        self.host = host or ModelHost(spec)
        self.ram_budget_bytes = ram_budget_bytes
        self.compose_method = compose_method
        self._ram = Tier(ram_budget_bytes)
        # A GPU tier only where the model runs on one (on the CPU the RAM tier already holds what generation uses).
        self._gpu = Tier(gpu_budget_bytes) if self.host.device != "cpu" else None
        self._lock = threading.RLock()
        from memos.models.adapters import AdapterPool
        from memos.models.distill_jobs import DistillJobs

        self._adapters = AdapterPool(self.host.loaded.model, self.host.fingerprint, budget=adapter_budget)
        # Distillations train in their own threads; they hold ``_lock`` only while they copy the shared model.
        self._distills = DistillJobs(self.host, self._lock)

    def fingerprint(self) -> Fingerprint:
        return self.host.fingerprint

    def context_length(self) -> int:
        return self.host.context_length

    def count_tokens(self, texts: list[str]) -> list[int]:
        with self._lock:
            return [self.host.memory_tokens([t]) for t in texts]

    def build_activation(self, text: str | list[str], path: str, compression: dict[str, Any] | None = None
                         ) -> ActivationBuilt:
        from memos.cubes.activation import save_kv
        from memos.models.host import compression_spec

        spec = compression_spec(compression)
        with self._lock:
            payload = self.host.build_kv(text, compression=spec)
            ref = save_kv(payload, Path(path))
            return ActivationBuilt(payload=ref, fingerprint=payload.fingerprint, tokens=payload.num_tokens,
                                   kept_tokens=payload.kept_tokens, compression=spec.model_dump())

    def ram_usage(self) -> dict[str, int]:
        with self._lock:
            return self.usage_counts()

    def usage_counts(self) -> dict[str, int]:
        """``ram_usage`` without waiting for the model (for metrics: a generation may hold it for seconds; the
        counts may then be a moment old)."""
        gpu = self._gpu
        return {"payloads": len(self._ram), "bytes": self._ram.bytes, "budget": self.ram_budget_bytes,
                "gpu_payloads": len(gpu) if gpu else 0, "gpu_bytes": gpu.bytes if gpu else 0,
                "gpu_budget": gpu.budget_bytes if gpu else 0, "adapters": len(self._adapters._ready), "adapter_loads": self._adapters.loads,
                "distillations_running": self._distills.running()}

    def start_distill(self, facts: list[dict[str, Any]], path: str, config: dict[str, Any]) -> DistillStatus:
        from memos.models.distill import LoraConfig, SourceFact

        return self._distills.start([SourceFact(**f) for f in facts], path, LoraConfig(**config))

    def start_reevaluate(self, facts: list[dict[str, Any]], adapter: dict[str, Any], path: str) -> DistillStatus:
        from memos.models.distill import SourceFact

        return self._distills.start_reevaluate([SourceFact(**f) for f in facts], PayloadRef.model_validate(adapter), path)

    def distill_status(self, job_id: str) -> DistillStatus:
        return self._distills.status(job_id)

    def cancel_distill(self, job_id: str) -> DistillStatus:
        return self._distills.cancel(job_id)

    def forget_distill(self, job_id: str) -> None:
        self._distills.forget(job_id)

    def forget(self, paths: list[str]) -> None:
        with self._lock:
            self._adapters.forget(paths)
            drop = set(paths)
            for tier in (self._ram, self._gpu):
                if tier is not None:
                    tier.drop([k for k in tier if k[0] in drop])

    def _load(self, block: KVBlock, from_disk: list[str], evicted: list[str]) -> Any:
        """The payload of ``block`` from the highest tier holding it (loading it from disk into RAM, then onto the
        GPU, where missing); RAM evictions are reported in ``evicted``."""
        from memos.cubes.activation import payload_nbytes

        key = (block.payload.path, block.payload.sha256)
        if self._gpu is not None and (hit := self._gpu.get(key)) is not None:
            return hit
        payload = self._ram.get(key)
        if payload is None:
            payload = self.host.load_kv(block.payload)
            from_disk.append(block.memory_id)
            evicted.extend(old[0] for old in self._ram.put(key, payload, payload_nbytes(payload)))
        if self._gpu is not None:
            payload = payload.to(self.host.device)
            self._gpu.put(key, payload, payload_nbytes(payload))  # what it evicts stays in RAM
        return payload

    def generate(
        self, messages: list[dict[str, str]], *, kv: list[KVBlock], texts: list[str], max_new_tokens: int,
        adapter: KVBlock | None = None,
    ) -> Generation:
        from memos.models.adapters import generate_with_adapter

        with self._lock:
            from_disk: list[str] = []
            evicted: list[str] = []
            payloads = [self._load(b, from_disk, evicted) for b in kv]
            prefix = None
            if payloads:
                prefix = payloads[0] if len(payloads) == 1 else self.host.compose(payloads, method=self.compose_method)
            ready = None
            if adapter is not None:
                ready, _ = self._adapters.get(adapter.payload)  # LRU drops of adapters are only RAM, not events
            result = generate_with_adapter(
                self.host, [*memory_messages(texts), *messages], adapter=ready, kv=prefix, max_new_tokens=max_new_tokens
            )
            by_path = {b.payload.path: b.memory_id for b in kv}
            return Generation(
                text=result.text, finish_reason=result.finish_reason, prompt_tokens=result.prompt_tokens,
                cached_tokens=result.cached_tokens, ttft_s=result.ttft_s, total_s=result.total_s,
                kv_loaded_from_disk=tuple(from_disk), ram_evicted=tuple(by_path.get(p, p) for p in evicted),
            )


class LazyModelService:
    """A ``ModelPort`` that opens its ``ModelService`` on the first call that needs the model.

    ``Memos.embedded`` uses it so that plaintext work (write, search, history) never pays for loading the model
    (~2 s, or ~20 s the first time the bundled GGUF is converted) while ``migrate(to="activation")`` and
    ``generate`` still work. ``forget`` before the model is loaded is a no-op (nothing is in its RAM yet).

    Raises:
        ModelUnavailable: from the first call that needs the model, when it cannot be loaded (the next call tries
            again).
    """

    def __init__(self, settings: Settings) -> None:
        assert settings.model is not None, "LazyModelService needs Settings.model"
        self.settings = settings
        self._service: ModelService | None = None
        self._open_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._service is not None

    def service(self) -> ModelService:
        with self._open_lock:
            if self._service is None:
                self._service = open_model_service(self.settings)
            return self._service

    # Every other method of the port is the service's, with its signature (passed through as is, so the two cannot
    # drift apart; tests/unit/test_model_attachment.py checks that the lazy port has every method of the port).
    def fingerprint(self, *args: Any, **kwargs: Any) -> Fingerprint:
        return self.service().fingerprint(*args, **kwargs)

    def count_tokens(self, *args: Any, **kwargs: Any) -> list[int]:
        return self.service().count_tokens(*args, **kwargs)

    def context_length(self, *args: Any, **kwargs: Any) -> int:
        return self.service().context_length(*args, **kwargs)

    def build_activation(self, *args: Any, **kwargs: Any) -> ActivationBuilt:
        return self.service().build_activation(*args, **kwargs)

    def ram_usage(self) -> dict[str, int]:
        return self.service().ram_usage()

    def usage_counts(self) -> dict[str, int]:
        if self._service is None:
            return {"payloads": 0, "bytes": 0, "budget": self.settings.activation_ram_bytes, "adapters": 0,
                    "adapter_loads": 0, "distillations_running": 0}
        return self._service.usage_counts()

    def generate(self, *args: Any, **kwargs: Any) -> Generation:
        return self.service().generate(*args, **kwargs)

    def start_distill(self, *args: Any, **kwargs: Any) -> DistillStatus:
        return self.service().start_distill(*args, **kwargs)

    def start_reevaluate(self, *args: Any, **kwargs: Any) -> DistillStatus:
        return self.service().start_reevaluate(*args, **kwargs)

    def distill_status(self, *args: Any, **kwargs: Any) -> DistillStatus:
        return self.service().distill_status(*args, **kwargs)

    def cancel_distill(self, *args: Any, **kwargs: Any) -> DistillStatus:
        return self.service().cancel_distill(*args, **kwargs)

    def forget_distill(self, *args: Any, **kwargs: Any) -> None:
        self.service().forget_distill(*args, **kwargs)

    def forget(self, paths: list[str]) -> None:
        if self._service is not None:
            self._service.forget(paths)
