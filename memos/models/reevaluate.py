"""Re-evaluating an adapter on another base model: can it stay adopted after the base model changed?

An adapter is trained for one base model (its fingerprint: model id, config hash, tokenizer hash, dtype) and
refused for any other at load (``FingerprintMismatch``). When the served base model changes, the kernel asks the
model host to re-evaluate each adopted adapter (``memos.kernel.ops.reevaluate``): :func:`reevaluate` loads the
adapter's factors *knowingly* for the loaded model, checks that every adapted module exists with the factors' shapes
(``memos.models.adapters.prepare``; a same-architecture model passes, another architecture does not), and runs the
same evaluation a distillation runs (``memos.models.distill``: closed-book recall on the trained and held-out
phrasings of the sources' questions, locality on general text) on a private copy of the loaded model. The result is
the same factors **re-stamped** for the loaded model: the header's fingerprint is the loaded model's and its
evaluation the new one, so that every later load keeps its fingerprint check; the kernel adopts it only if the
evaluation passes the adapter's gate.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from memos.cubes.parametric import adapter_info, load_adapter
from memos.errors import InvalidState, InvalidSyscall
from memos.models.adapters import active_adapter
from memos.models.distill import (
    DistillProgress,
    DistillResult,
    Evaluation,
    LoraConfig,
    SourceFact,
    _build_examples,
    _Cancelled,
    _evaluate,
)
from memos.models.loader import LoadedModel
from memos.types import PayloadRef

if TYPE_CHECKING:
    from memos.models.host import ModelHost


def reevaluate(
    model: ModelHost | LoadedModel,
    facts: Sequence[SourceFact],
    ref: PayloadRef,
    *,
    progress: Callable[[DistillProgress], None] | None = None,
    cancel: threading.Event | None = None,
    lock: AbstractContextManager[Any] | None = None,
) -> DistillResult:
    """Evaluate the adapter at ``ref`` on ``model`` with the questions of ``facts`` (the source versions it learnt;
    those still known) and return it re-stamped for ``model`` (module docstring). ``steps_done`` is 0.

    Raises:
        CorruptPayload: the adapter file is missing, altered or malformed.
        InvalidSyscall: no facts; or the adapter cannot be applied to this model (a module it adapts is missing or
            has other sizes: another architecture).
        InvalidState: the shared model has an adapter applied right now.
    """
    if not facts:
        raise InvalidSyscall("re-evaluation needs at least one source memory to ask about")
    loaded = model if isinstance(model, LoadedModel) else model.loaded
    # The header's own fingerprint is what the adapter is loaded for: the mismatch with ``model`` is the point.
    payload = load_adapter(ref, adapter_info(ref).fingerprint)
    known = set(LoraConfig.model_fields)
    config = LoraConfig.model_validate({k: v for k, v in payload.info.config.items() if k in known})
    _, probes = _build_examples(loaded.tokenizer, facts)
    with lock or nullcontext():
        if (name := active_adapter(loaded.model)) is not None:
            raise InvalidState(f"adapter {name} is applied to the shared model; re-evaluation must not copy it")
        work = copy.deepcopy(loaded.model)
    work.requires_grad_(False)
    started = time.perf_counter()
    try:
        measured = _evaluate(work, loaded.tokenizer, payload, probes, config, progress, cancel)
    except _Cancelled:
        return DistillResult(payload=None, cancelled=True, steps_done=0, loss_curve=(), evaluation=None)
    finally:
        del work
    # How it was trained stays (steps, training time, loss); what it does on this model is measured anew.
    before = {k: v for k, v in payload.info.evaluation.items() if k in Evaluation.model_fields and k not in measured}
    evaluation = Evaluation.model_validate({**before, **measured, "facts": len(facts),
                                            "eval_s": time.perf_counter() - started})
    info = replace(payload.info, fingerprint=loaded.fingerprint, evaluation=evaluation.model_dump(mode="json"))
    return DistillResult(payload=replace(payload, info=info), cancelled=False, steps_done=0,
                         loss_curve=payload.info.loss_curve, evaluation=evaluation)
