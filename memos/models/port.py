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

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from memos.types import Fingerprint, PayloadRef


class ActivationBuilt(BaseModel):
    """A payload the host wrote: ``tokens`` the prompt positions it covers, ``kept_tokens`` the entries it caches
    (fewer when tokens were selected), ``compression`` how (``KVCompression`` as a dict)."""

    model_config = ConfigDict(frozen=True)

    payload: PayloadRef
    fingerprint: Fingerprint
    tokens: int
    kept_tokens: int | None = None
    compression: dict[str, Any] | None = None


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


DistillState = Literal["running", "done", "cancelled", "failed"]


class DistillStatus(BaseModel):
    """Where a distillation job on the model host stands (``memos.models.distill_jobs``).

    Attributes:
        job_id: the host's id for the job.
        state: ``running``, ``done`` (adapter written), ``cancelled`` or ``failed``.
        phase / step / total / loss: the last progress report (``train`` steps, then ``evaluate`` batches).
        steps: optimiser steps done (set when the job ends).
        payload / fingerprint / evaluation: the written adapter, the model it is for, and what its distillation
            measured (``done`` only; the evaluation is ``memos.models.distill.Evaluation`` as JSON).
        loss_curve: ``(step, loss)`` of the training that wrote the adapter (``done`` only).
        error: the typed error of a failed job, as ``MemosError.to_wire`` gives it.
    """

    model_config = ConfigDict(frozen=True)

    job_id: str
    state: DistillState
    phase: str = "train"
    step: int = 0
    total: int = 0
    loss: float | None = None
    steps: int = 0
    payload: PayloadRef | None = None
    fingerprint: Fingerprint | None = None
    evaluation: dict[str, Any] | None = None
    loss_curve: tuple[tuple[int, float], ...] = ()
    error: dict[str, Any] | None = None


class ModelPort(Protocol):
    def fingerprint(self) -> Fingerprint: ...

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes as a memory block in a prompt."""
        ...

    def context_length(self) -> int:
        """The most positions (prompt, memory and answer together) the model takes."""
        ...

    def build_activation(self, text: str | list[str], path: str, compression: dict[str, Any] | None = None
                         ) -> ActivationBuilt:
        """Compute the KV cache of ``text`` as a memory block (a list: consecutive blocks, one cache), compressed as
        ``compression`` (a ``KVCompression`` as a dict; None: uncompressed) says, and write it to ``path``.

        Raises:
            PayloadTooLarge: the text does not fit the model's context. BackendError: the file cannot be written.
            InvalidSyscall: a malformed compression.
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

    def start_distill(self, facts: list[dict[str, object]], path: str, config: dict[str, object]) -> DistillStatus:
        """Start training a LoRA adapter on ``facts`` (``{"id", "version", "text"}``) in the background; it is
        evaluated and written to ``path`` when done. Holds the shared model only to copy it: generation goes on.

        Raises:
            CapacityExceeded: the host trains as many adapters as it may at once. InvalidSyscall: no facts.
        """
        ...

    def start_reevaluate(self, facts: list[dict[str, object]], adapter: dict[str, object], path: str) -> DistillStatus:
        """Start re-evaluating the adapter ``adapter`` (a ``PayloadRef`` as a dict; trained for another base model)
        on the loaded model with the questions of ``facts``; when done, the adapter re-stamped for the loaded model
        (same factors, its fingerprint, the new evaluation) is at ``path`` (``memos.models.reevaluate``). Followed
        like a distillation: ``distill_status``, ``cancel_distill``, ``forget_distill``.

        Raises:
            CapacityExceeded: the host runs as many jobs as it may at once. InvalidSyscall: no facts.
        """
        ...

    def distill_status(self, job_id: str) -> DistillStatus:
        """Progress of a job. Raises NotFound for an unknown (or forgotten) job."""
        ...

    def cancel_distill(self, job_id: str) -> DistillStatus:
        """Ask a job to stop at its next step; a cancelled job writes nothing."""
        ...

    def forget_distill(self, job_id: str) -> None:
        """Drop a job's status (a running job is cancelled first)."""
        ...

    def forget(self, paths: list[str]) -> None:
        """Drop any cached copy of these payloads (they were demoted or deleted)."""
        ...
