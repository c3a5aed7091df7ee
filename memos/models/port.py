"""What the kernel needs from a model host, as a port: the kernel never imports torch, transformers or Ray.

(This module imports neither: it is plain data and a Protocol, importable by the kernel.)

The in-process implementation is ``memos.models.service.ModelService``; over Ray, ``memos.hosting.model_actor``
proxies the same methods to the model-host actor. Everything that crosses the port is plain data (pydantic
models, dicts, strings), so it travels between processes unchanged.

Payload files are named by the kernel (paths under its blob dir) and written by the host, atomically; the kernel
records their ``PayloadRef`` (path, sha256, size) in the MemCube header and the host checks both the digest and the
model fingerprint before it uses one.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict

from memos.types import Fingerprint, PayloadRef


class ActivationBuilt(BaseModel):
    model_config = ConfigDict(frozen=True)

    payload: PayloadRef
    fingerprint: Fingerprint
    tokens: int


class KVBlock(BaseModel):
    """One activation memory to inject: its payload and the memory it belongs to (for errors and accounting)."""

    model_config = ConfigDict(frozen=True)

    memory_id: str
    payload: PayloadRef


class Generation(BaseModel):
    model_config = ConfigDict(frozen=True)

    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float
    total_s: float
    kv_loaded_from_disk: tuple[str, ...] = ()  # memory ids whose payload was not in the host's RAM tier
    ram_evicted: tuple[str, ...] = ()  # memory ids whose payload the host dropped from RAM to stay in budget


class ParametricBuilt(BaseModel):
    """A trained adapter written to its file, with what its distillation measured."""

    model_config = ConfigDict(frozen=True)

    payload: PayloadRef
    fingerprint: Fingerprint
    steps: int
    evaluation: dict  # memos.models.lora.Evaluation as JSON: recall with/without, locality delta, timings


class ModelPort(Protocol):
    def fingerprint(self) -> Fingerprint: ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes as a memory block in a prompt."""
        ...

    def build_activation(self, text: str, path: str) -> ActivationBuilt:
        """Compute the KV cache of ``text`` as a memory block and write it to ``path``.

        Raises:
            PayloadTooLarge: the text does not fit the model's context. BackendError: the file cannot be written.
        """
        ...

    def generate(
        self, messages: list[dict[str, str]], *, kv: list[KVBlock], texts: list[str], max_new_tokens: int,
        adapter: KVBlock | None = None,
    ) -> Generation:
        """Answer ``messages`` with ``kv`` injected as the prompt prefix, then ``texts`` as plaintext memory blocks,
        with the LoRA ``adapter`` applied for this request only (under an adapter, ``kv`` is prefilled as text).

        Raises:
            CorruptPayload / FingerprintMismatch: a payload is damaged or for another model (nothing is used).
        """
        ...

    def distill(self, facts: list[dict[str, object]], path: str, config: dict[str, object]) -> ParametricBuilt:
        """Train a LoRA adapter on ``facts`` (``{"id", "version", "text"}``), evaluate it, write it to ``path``.
        Holds the shared model only to copy it: generation goes on meanwhile."""
        ...

    def forget(self, paths: list[str]) -> None:
        """Drop any cached copy of these payloads (they were demoted or deleted)."""
        ...
