"""The model host as a Ray actor (``memos-model``) and the kernel's proxy to it.

``ModelActor`` is a plain class over ``ModelService``; ``ray.remote`` is applied in ``model_actor_class``. It asks
Ray for ``num_cpus`` CPUs and runs torch on that many threads (Ray pins OMP threads to the actor's CPUs). On a GPU
node, a model actor can be placed there while the kernel stays on the head; payload files must then live on a
filesystem both see.

``RayModelPort`` implements ``memos.models.port.ModelPort`` by calling the actor; Ray failures become
``BackendError`` here, and the host's own typed errors (``CorruptPayload``, ``FingerprintMismatch``, ...) travel back
unchanged in an envelope.
"""

from __future__ import annotations

from typing import Any

from memos.config import Settings
from memos.errors import BackendError, MemosError, error_from_wire
from memos.models.port import ActivationBuilt, DistillStatus, Generation, KVBlock
from memos.types import Fingerprint


class ModelActor:
    def __init__(self, settings: dict[str, Any], num_cpus: int) -> None:
        from memos.models.service import open_model_service

        self.service = open_model_service(Settings.model_validate(settings), num_threads=num_cpus)
        from memos.hosting.metrics import ModelMetrics

        self.metrics = ModelMetrics()

    def call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            result = getattr(self.service, method)(*args, **kwargs)
        except MemosError as exc:
            return {"error": exc.to_wire()}
        finally:
            self._refresh_metrics()
        return {"ok": result.model_dump(mode="json") if hasattr(result, "model_dump") else result}

    def ram_usage(self) -> dict[str, int]:
        return self.service.ram_usage()

    def _refresh_metrics(self) -> None:
        try:
            self.metrics.refresh(self.service.usage_counts())
        except Exception as exc:  # noqa: BLE001 -- metrics are an observer: never fail (or mask the error of) the call
            import logging

            logging.getLogger("memos.model").warning("model metrics refresh failed: %r", exc)


def model_actor_class(num_cpus: int) -> Any:
    import ray

    # Threaded: a distillation trains on a copy of the model while generations go on (ModelService's lock
    # serialises the tensor work that shares the model).
    return ray.remote(num_cpus=num_cpus, max_restarts=0, max_concurrency=4)(ModelActor)


class RayModelPort:
    """``ModelPort`` over the model actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._fingerprint: Fingerprint | None = None
        self._context_length: int | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        import ray

        try:
            answer = ray.get(self.actor.call.remote(method, *args, **kwargs))
        except ray.exceptions.RayError as exc:
            raise BackendError(f"model host unreachable during {method}: {exc}") from exc
        if "error" in answer:
            raise error_from_wire(answer["error"])
        return answer["ok"]

    def fingerprint(self) -> Fingerprint:
        if self._fingerprint is None:  # immutable for the life of the actor
            self._fingerprint = Fingerprint.model_validate(self._call("fingerprint"))
        return self._fingerprint

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self._call("count_tokens", texts)

    def context_length(self) -> int:
        if self._context_length is None:  # fixed for the life of the actor
            self._context_length = int(self._call("context_length"))
        return self._context_length

    def build_activation(self, text: str | list[str], path: str, compression: dict[str, Any] | None = None
                         ) -> ActivationBuilt:
        return ActivationBuilt.model_validate(self._call("build_activation", text, path, compression))

    def generate(self, messages: list[dict[str, str]], *, kv: list[KVBlock], texts: list[str], max_new_tokens: int,
                 adapter: KVBlock | None = None) -> Generation:
        return Generation.model_validate(
            self._call("generate", messages, kv=kv, texts=texts, max_new_tokens=max_new_tokens, adapter=adapter)
        )

    def start_distill(self, facts: list[dict[str, Any]], path: str, config: dict[str, Any]) -> DistillStatus:
        return DistillStatus.model_validate(self._call("start_distill", facts, path, config))

    def start_reevaluate(self, facts: list[dict[str, Any]], adapter: dict[str, Any], path: str) -> DistillStatus:
        return DistillStatus.model_validate(self._call("start_reevaluate", facts, adapter, path))

    def distill_status(self, job_id: str) -> DistillStatus:
        return DistillStatus.model_validate(self._call("distill_status", job_id))

    def cancel_distill(self, job_id: str) -> DistillStatus:
        return DistillStatus.model_validate(self._call("cancel_distill", job_id))

    def forget_distill(self, job_id: str) -> None:
        self._call("forget_distill", job_id)

    def forget(self, paths: list[str]) -> None:
        self._call("forget", paths)
