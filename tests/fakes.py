"""Test doubles that need no model: the hashing embedder at 64 dimensions, a model host double, ..."""

from __future__ import annotations

import hashlib
import json
import threading
import time

from memos.models.hashing import HashingEmbedder as _ProductHashingEmbedder


class HashingEmbedder(_ProductHashingEmbedder):
    """The product's hashing embedder (``memos.models.hashing``) at the 64 dimensions the unit tests use."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)


class FakeModelPort:
    """A model host double for kernel unit tests: 'builds' a payload file of a fixed size, counts words as tokens.
    It has no model: ``generate`` only checks the payloads it is given (as the real host does) and answers with a
    count; the real host is exercised by tests/integration."""

    def __init__(self, payload_bytes: int = 1000, model_id: str = "fake") -> None:
        from memos.types import Fingerprint

        self.payload_bytes = payload_bytes
        self._fingerprint = Fingerprint(model_id=model_id, config_hash="c", tokenizer_hash="t", dtype="float32")
        self.forgotten: list[str] = []
        self.compressions: list[dict | None] = []
        self.context_tokens = 2048

    def fingerprint(self):
        return self._fingerprint

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t.split()) + 4 for t in texts]

    def context_length(self) -> int:
        return self.context_tokens

    def build_activation(self, text: str | list[str], path: str, compression: dict | None = None):
        """A compression is recorded (``self.compressions``) and, with a selection, halves the 'kept' tokens."""
        from pathlib import Path

        from memos.models.port import ActivationBuilt
        from memos.types import PayloadRef

        self.compressions.append(compression)
        text = "\n\n".join(text) if isinstance(text, list) else text  # a group: one cache of several texts
        data = (text.encode() * (self.payload_bytes // max(1, len(text)) + 1))[: self.payload_bytes]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        ref = PayloadRef(path=path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        tokens = len(text.split())
        kept = tokens // 2 if compression and compression.get("select", "none") != "none" else tokens
        return ActivationBuilt(payload=ref, fingerprint=self._fingerprint, tokens=tokens, kept_tokens=kept,
                               compression=compression)

    def forget(self, paths: list[str]) -> None:
        self.forgotten.extend(paths)

    def generate(self, messages, *, kv, texts, max_new_tokens, adapter=None):
        """Checks every payload as the real host does (the file is there and its sha256 matches), else raises
        CorruptPayload; answers with the number of memories it was given."""
        from pathlib import Path

        from memos.errors import CorruptPayload
        from memos.models.port import Generation

        for block in [*kv, *([adapter] if adapter is not None else [])]:
            path = Path(block.payload.path)
            if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != block.payload.sha256:
                raise CorruptPayload(f"payload of memory {block.memory_id} is missing or altered", memory_id=block.memory_id)
        return Generation(text=f"{len(kv)} kv, {len(texts)} text", finish_reason="stop", prompt_tokens=1,
                          cached_tokens=0, ttft_s=0.0, total_s=0.0)

    # Distillation as the real host runs it (a background job the kernel polls), with scripted "training" of
    # ``distill_steps`` steps; while ``hold`` is an Event not yet set, each step waits for it (or for a cancel).

    distill_steps = 3
    hold: threading.Event | None = None
    # The evaluation a distillation with a recipe reports: recall 1.0, unless the recipe's config is in
    # ``weak_recipes`` (then recall 0.2: a recipe that does not learn). ``distill_configs`` records each config.
    weak_recipes: tuple[dict, ...] = ()

    def start_distill(self, facts, path, config):
        from memos.models.port import DistillStatus

        if not hasattr(self, "_distills"):
            self._distills: dict[str, tuple[DistillStatus, threading.Event]] = {}
        job_id = f"fake-{len(self._distills)}"
        self.distill_configs = [*getattr(self, "distill_configs", []), dict(config)]
        status = DistillStatus(job_id=job_id, state="running", total=self.distill_steps)
        cancel = threading.Event()
        self._distills[job_id] = (status, cancel)
        recall = 0.2 if dict(config) in [dict(w) for w in self.weak_recipes] else 1.0
        threading.Thread(target=self._train, args=(job_id, list(facts), path, cancel, recall), daemon=True).start()
        return status

    def _train(self, job_id, facts, path, cancel, recall=1.0):
        from pathlib import Path

        from memos.types import PayloadRef

        def update(**changes):
            if job_id not in self._distills:  # forgotten by the kernel (it left early)
                return
            status, _ = self._distills[job_id]
            self._distills[job_id] = (status.model_copy(update=changes), cancel)

        for step in range(1, self.distill_steps + 1):
            update(step=step, loss=1.0 / step)
            while self.hold is not None and not self.hold.is_set() and not cancel.is_set():
                time.sleep(0.01)
            if cancel.is_set():
                update(state="cancelled", steps=step)
                return
        data = json.dumps(facts, sort_keys=True).encode()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        ref = PayloadRef(path=path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        evaluation = {"facts": len(facts), "steps": self.distill_steps, "recall_with": recall, "recall_without": 0.0,
                      "held_out_recall_with": recall, "locality_delta": 0.01, "final_loss": 0.1,
                      "weak_sources": [] if recall == 1.0 else [f["id"] for f in facts],
                      # one trained question per fact, answered with the fact itself (right unless the recipe is weak)
                      "answers": [{"question": f"What do you know about {f['text'].split()[0]}?", "reply": f["text"],
                                   "source": f["id"], "correct": recall == 1.0} for f in facts]}
        update(state="done", steps=self.distill_steps, payload=ref, fingerprint=self._fingerprint, evaluation=evaluation,
               loss_curve=tuple((step, 1.0 / step) for step in range(1, self.distill_steps + 1)))

    # Re-evaluation on this host's (new) base model: the adapter shows ``reevaluate_recall``; when ``applicable`` is
    # False it cannot be applied (another architecture), as the real host's shape check says. ``reevaluations``
    # records each (facts, adapter path, new path).
    reevaluate_recall = 1.0
    applicable = True

    def start_reevaluate(self, facts, adapter, path):
        from pathlib import Path

        from memos.errors import InvalidSyscall
        from memos.models.port import DistillStatus
        from memos.types import PayloadRef

        if not hasattr(self, "_distills"):
            self._distills = {}
        self.reevaluations = [*getattr(self, "reevaluations", []), (list(facts), adapter["path"], path)]
        job_id = f"fake-{len(self._distills)}"
        if not self.applicable:
            error = InvalidSyscall(f"adapter {adapter['path']}: model.layers.0.self_attn.q_proj is Linear (64, 64), "
                                   "the adapter's update is (576, 576)").to_wire()
            status = DistillStatus(job_id=job_id, state="failed", error=error)
        else:
            data = Path(adapter["path"]).read_bytes() + json.dumps(self._fingerprint.model_dump()).encode()
            Path(path).write_bytes(data)
            ref = PayloadRef(path=path, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
            recall = self.reevaluate_recall
            evaluation = {"facts": len(facts), "steps": self.distill_steps, "recall_with": recall, "recall_without": 0.0,
                          "held_out_recall_with": recall, "locality_delta": 0.02, "final_loss": 0.1,
                          "weak_sources": [] if recall == 1.0 else [f["id"] for f in facts],
                          "answers": [{"question": f"What do you know about {f['text'].split()[0]}?",
                                       "reply": f["text"], "source": f["id"], "correct": recall == 1.0} for f in facts]}
            status = DistillStatus(job_id=job_id, state="done", payload=ref, fingerprint=self._fingerprint,
                                   evaluation=evaluation)
        self._distills[job_id] = (status, threading.Event())
        return status

    def distill_status(self, job_id):
        from memos.errors import NotFound

        if job_id not in getattr(self, "_distills", {}):
            raise NotFound(f"no distillation job {job_id}")
        return self._distills[job_id][0]

    def cancel_distill(self, job_id):
        status, cancel = self._distills[job_id]
        cancel.set()
        return status

    def forget_distill(self, job_id):
        entry = self._distills.pop(job_id, None)
        if entry is not None:
            entry[1].set()
