"""Serving adapters (``memos.models.adapters``) on a tiny torch model: the hook computes LoRA exactly, leaves no
trace after the request (also on error), refuses a second adapter at once, and the pool keeps its budget (LRU);
and the question rules that distillation trains and evaluates with (``memos.models.fact_questions``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memos.cubes.parametric import AdapterInfo, AdapterPayload, save_adapter
from memos.errors import FingerprintMismatch, InvalidState, InvalidSyscall
from memos.models.adapters import AdapterPool, active_adapter, adapter_applied, prepare
from memos.models.fact_questions import answer_matches, derive, normalise, split_sentences
from memos.types import Fingerprint, MemoryRef

FP = Fingerprint(model_id="tiny@0", config_hash="c" * 64, tokenizer_hash="t" * 64, dtype="float32")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.q = torch.nn.Linear(6, 4, bias=False)
        self.v = torch.nn.Linear(4, 3, bias=True)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.v(torch.tanh(self.q(x)))


def adapter(seed: int, rank: int = 2, alpha: float = 4.0) -> AdapterPayload:
    gen = torch.Generator().manual_seed(seed)
    weights = {"q": (torch.randn(rank, 6, generator=gen), torch.randn(4, rank, generator=gen)),
               "v": (torch.randn(rank, 4, generator=gen), torch.randn(3, rank, generator=gen))}
    info = AdapterInfo(fingerprint=FP, sources=(MemoryRef(id=f"m_{seed:016x}", version=1),), rank=rank, alpha=alpha,
                       modules=("q", "v"))
    return AdapterPayload(info=info, weights=weights)


def lora_reference(model: Tiny, payload: AdapterPayload, x: torch.Tensor) -> torch.Tensor:
    s = payload.info.scaling
    (qa, qb), (va, vb) = payload.weights["q"], payload.weights["v"]
    h = torch.tanh(model.q(x) + s * (x @ qa.T @ qb.T))
    return model.v(h) + s * (h @ va.T @ vb.T)


def test_applied_adapter_adds_the_scaled_lora_update_and_leaves_no_trace() -> None:
    model, payload, x = Tiny(), adapter(1), torch.randn(5, 6)
    base, expected = model(x), lora_reference(model, payload, x)
    with adapter_applied(model, prepare(payload, model, name="a")):
        assert active_adapter(model) == "a"
        torch.testing.assert_close(model(x), expected)
    assert active_adapter(model) is None
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), base)


def test_an_error_inside_the_request_still_removes_the_adapter() -> None:
    model, x = Tiny(), torch.randn(2, 6)
    base = model(x)
    with pytest.raises(RuntimeError, match="boom"), adapter_applied(model, prepare(adapter(1), model, name="a")):
        raise RuntimeError("boom")
    assert active_adapter(model) is None and torch.equal(model(x), base)


def test_requests_alternating_between_adapters_each_get_only_their_own() -> None:
    model, x = Tiny(), torch.randn(3, 6)
    a, b = adapter(1), adapter(2)
    ready = {"a": prepare(a, model, name="a"), "b": prepare(b, model, name="b")}
    base = model(x)
    for name, payload in [("a", a), ("b", b), (None, None), ("a", a), (None, None), ("b", b)]:
        with adapter_applied(model, ready.get(name)):
            out = model(x)
        expected = base if payload is None else lora_reference(model, payload, x)
        torch.testing.assert_close(out, expected)


def test_a_second_adapter_on_the_same_model_is_refused() -> None:
    model = Tiny()
    a, b = prepare(adapter(1), model, name="a"), prepare(adapter(2), model, name="b")
    with adapter_applied(model, a), pytest.raises(InvalidState, match="adapter a is already applied"), \
            adapter_applied(model, b):
        pass
    assert active_adapter(model) is None


def test_adapter_for_other_modules_or_shapes_is_refused() -> None:
    model, payload = Tiny(), adapter(1)
    renamed = AdapterPayload(info=AdapterInfo(**{**payload.info.__dict__, "modules": ("q", "w")}),
                             weights={"q": payload.weights["q"], "w": payload.weights["v"]})
    with pytest.raises(InvalidSyscall, match="adapts w, which the model does not have"):
        prepare(renamed, model, name="x")
    swapped = AdapterPayload(info=payload.info, weights={"q": payload.weights["v"], "v": payload.weights["q"]})
    with pytest.raises(InvalidSyscall, match="Linear"):
        prepare(swapped, model, name="x")


def test_prepared_factors_follow_the_model_dtype() -> None:
    model = Tiny().to(torch.bfloat16)
    ready = prepare(adapter(1), model, name="a")
    assert {t.dtype for pair in ready.factors.values() for t in pair} == {torch.bfloat16}
    assert ready.nbytes == sum(t.nbytes for pair in ready.factors.values() for t in pair)


def test_pool_loads_once_keeps_its_budget_and_evicts_least_recently_used(tmp_path: Path) -> None:
    model = Tiny()
    refs = [save_adapter(adapter(i), str(tmp_path / f"{i}.safetensors")) for i in range(3)]
    pool = AdapterPool(model, FP, budget=2)
    assert pool.get(refs[0])[1] == [] and pool.get(refs[1])[1] == []
    assert pool.get(refs[0])[1] == []  # hit: 0 becomes most recently used
    assert pool.get(refs[2])[1] == [refs[1].path]
    assert pool.usage()["adapters"] == 2 and pool.usage()["loads"] == 3 and pool.usage()["evictions"] == 1
    pool.forget([refs[0].path])
    assert pool.usage()["adapters"] == 1
    with pytest.raises(FingerprintMismatch):
        AdapterPool(model, FP.model_copy(update={"model_id": "other@1"})).get(refs[0])
    with pytest.raises(InvalidSyscall, match="at least 1"):
        AdapterPool(model, FP, budget=0)


# ------------------------------------------------------------------------------------------ fact questions


def test_rules_derive_a_trained_question_and_held_out_phrasings() -> None:
    [s] = derive("Mara Quill keeps the brass key in Trumwick.")
    trained = [q for q in s.questions if q.trained]
    assert [q.question for q in trained] == ["Where does Mara Quill keep the brass key?"]
    assert {q.key for q in s.questions} == {"Trumwick"}
    assert [q.question for q in s.questions if not q.trained] == [
        "In what place does Mara Quill keep the brass key?", "Fill in the blank: Mara Quill keeps the brass key in ___."]
    [s] = derive("The population of Zaexholm is 47,372.")
    assert s.paraphrases == ("Zaexholm's population is 47,372.",)
    assert s.questions[0].question == "What is the population of Zaexholm?" and s.questions[0].key == "47,372"
    [s] = derive("Ilsa Dorn works as a glassblower at Fenwick Mills.")
    assert (s.questions[0].question, s.questions[0].key) == ("What does Ilsa Dorn work as?", "glassblower")


def test_a_sentence_no_rule_matches_is_trained_as_a_cloze() -> None:
    [s] = derive("The team meeting moved to Thursday at 3 pm in room B")
    [q] = s.questions
    assert q.trained and q.key == "room B" and q.question.endswith("in ___.")
    [s] = derive("Bob likes cheese")
    assert s.questions[0].key == "cheese"
    assert derive("Snow.")[0].questions == ()


def test_sentences_are_split_on_ends_and_lines_and_answers_match_normalised() -> None:
    assert split_sentences("A b c. D e f!\nG h") == ["A b c.", "D e f!", "G h."]
    assert normalise("The Population is 47,372.") == "population is 47372"
    assert answer_matches("It is 47372 people.", "47,372")
    assert answer_matches("She keeps it in the TRUMWICK vault", "Trumwick")
    assert not answer_matches("in Trumwicks", "Trumwick vault") and not answer_matches("anything", "the")
