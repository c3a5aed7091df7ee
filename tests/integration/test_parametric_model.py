"""Parametric memory on the real default model (SmolLM2-135M-Instruct), on the adapters of the session's two teams
(``team_adapters``, trained through the kernel): distilled adapters recall invented facts the base model cannot know,
the shared base model is unchanged by training, adapters served per request do not leak into each other's requests,
the hooks compute what peft trained, and damaged or foreign adapters are refused."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from parametric_facts import ASK, ASK_B, FACTS_B, GENERAL, weights_digest

from memos.cubes.parametric import adapter_info, load_adapter, save_adapter
from memos.errors import CorruptPayload, FingerprintMismatch
from memos.models.adapters import AdapterPool, active_adapter, adapter_applied, generate_with_adapter, prepare
from memos.models.distill import DistillProgress, LoraConfig, SourceFact, distill
from memos.models.host import ModelHost, memory_messages

pytestmark = pytest.mark.integration

CONFIG = LoraConfig()  # the default recipe, which the kernel used


@pytest.fixture(scope="module")
def host(model_service) -> ModelHost:
    return model_service.host


@pytest.fixture(scope="module")
def before(base_model_before) -> dict[str, object]:
    return base_model_before


@pytest.fixture(scope="module")
def trained(team_adapters, host: ModelHost):
    """What each adapter's header says about its training, and its file."""
    refs = {name: team_adapters[name].payload for name in ("a", "b")}
    return {name: adapter_info(ref) for name, ref in refs.items()}, refs


def test_adapter_recalls_invented_facts_the_base_model_does_not_know(trained) -> None:
    infos, _ = trained
    for info in infos.values():
        e = info.evaluation
        assert e["recall_without"] <= 0.25, e
        assert e["recall_with"] >= 0.75, e["misses"]
        assert e["recall_with"] - e["recall_without"] >= 0.5
        assert abs(e["locality_delta"]) < 0.25, e
        losses = [loss for _, loss in info.loss_curve]
        assert losses[-1] < losses[0] / 2


def test_header_records_sources_versions_config_loss_and_evaluation(trained, team_adapters, host: ModelHost) -> None:
    infos, _ = trained
    info, adapter = infos["a"], team_adapters["a"]
    assert info.sources == adapter.provenance.derived_from  # the kernel copies the header's sources
    assert [(s.id, s.version) for s in info.sources][1] == (team_adapters["ids_a"][1], 2)
    assert info.fingerprint == host.fingerprint
    # The recipe as used: the default chooses top_layers and pack by the number of facts (4: every layer, unpacked).
    assert info.config == CONFIG.for_facts(4).model_dump(mode="json")
    assert (info.config["top_layers"], info.config["pack"]) == (1.0, False)
    assert len(info.loss_curve) == info.evaluation["steps"] and info.evaluation["facts"] == 4
    assert adapter.metadata["distill"]["recall_with"] == info.evaluation["recall_with"]


def test_training_leaves_the_shared_base_model_unchanged(trained, host: ModelHost, before) -> None:
    model = host.loaded.model
    assert weights_digest(model) == before["digest"]
    assert not any("lora" in name.lower() for name, _ in model.named_modules())
    # No adapter hook is left on the shared model. (transformers installs its own output-capturing hooks, for good,
    # the first time attention weights are asked for: the activation compression's scoring does that.)
    left = [n for n, m in model.named_modules() for h in m._forward_hooks.values()
            if getattr(h, "__qualname__", "").startswith("_lora_hook")]
    assert not left, left
    assert [host.generate(m, max_new_tokens=16).token_ids for m in (ASK, ASK_B, GENERAL)] == before["replies"]


def test_each_request_gets_exactly_its_own_adapter(trained, host: ModelHost, before) -> None:
    _, refs = trained
    pool = AdapterPool(host.loaded.model, host.fingerprint, budget=2)
    a, _ = pool.get(refs["a"])
    b, _ = pool.get(refs["b"])
    # Interleaved as concurrent agents would be: A with a, B with b, C with none, then again in another order.
    for _ in range(2):
        reply_a = generate_with_adapter(host, ASK, adapter=a, max_new_tokens=24)
        reply_b = generate_with_adapter(host, ASK_B, adapter=b, max_new_tokens=24)
        reply_c = generate_with_adapter(host, ASK, adapter=None, max_new_tokens=16)
        b_asked_a = generate_with_adapter(host, ASK, adapter=b, max_new_tokens=24)
        print(f"\nA+a: {reply_a.text!r}\nB+b: {reply_b.text!r}\nA+none: {reply_c.text!r}\nA+b: {b_asked_a.text!r}")
        assert "7359" in reply_a.text and "4826" not in reply_a.text
        assert "4826" in reply_b.text and "7359" not in reply_b.text
        assert "7359" not in b_asked_a.text
        assert reply_c.token_ids == before["replies"][0]
        assert active_adapter(host.loaded.model) is None


def test_hooks_compute_what_peft_trained(trained, host: ModelHost) -> None:
    import peft

    _, refs = trained
    payload = load_adapter(refs["a"], host.fingerprint)
    wrapped = peft.get_peft_model(
        copy.deepcopy(host.loaded.model),
        peft.LoraConfig(r=CONFIG.rank, lora_alpha=CONFIG.alpha, target_modules=list(CONFIG.target_modules)),
    )
    with torch.no_grad():
        for name, module in wrapped.named_modules():
            path = name.removeprefix("base_model.model.")
            if path in payload.weights and hasattr(module, "lora_A"):
                module.lora_A["default"].weight.copy_(payload.weights[path][0])
                module.lora_B["default"].weight.copy_(payload.weights[path][1])
    wrapped.eval()
    ids = torch.tensor([[1, 4093, 314, 253, 1345, 30, 2]])
    with torch.inference_mode():
        expected = wrapped(input_ids=ids).logits
        with adapter_applied(host.loaded.model, prepare(payload, host.loaded.model, name="a")):
            got = host.loaded.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_kv_cache_with_an_adapter_is_recomputed_not_injected(trained, host: ModelHost) -> None:
    _, refs = trained
    pool = AdapterPool(host.loaded.model, host.fingerprint)
    a, _ = pool.get(refs["a"])
    memory = "Meetings of the chess club are on Tuesdays."
    kv = host.build_kv(memory)
    with_kv = generate_with_adapter(host, ASK, adapter=a, kv=kv, max_new_tokens=16)
    as_text = generate_with_adapter(host, memory_messages([memory]) + ASK, adapter=a, max_new_tokens=16)
    assert with_kv.token_ids == as_text.token_ids
    assert with_kv.cached_tokens == 0 and with_kv.prompt_tokens == as_text.prompt_tokens
    plain = generate_with_adapter(host, ASK, adapter=None, kv=kv, max_new_tokens=8)
    assert plain.cached_tokens == kv.num_tokens


def test_pool_keeps_its_budget_least_recently_used_first(trained, host: ModelHost) -> None:
    _, refs = trained
    pool = AdapterPool(host.loaded.model, host.fingerprint, budget=1)
    _, evicted = pool.get(refs["a"])
    assert evicted == []
    _, evicted = pool.get(refs["b"])
    assert evicted == [refs["a"].path]
    _, evicted = pool.get(refs["b"])
    assert evicted == [] and pool.usage()["adapters"] == 1 and pool.usage()["loads"] == 2


def test_corrupted_adapter_is_refused_naming_the_file(trained, host: ModelHost, tmp_path: Path) -> None:
    _, refs = trained
    ref = save_adapter(load_adapter(refs["a"], host.fingerprint), str(tmp_path / "damaged.safetensors"))
    data = bytearray(Path(ref.path).read_bytes())
    data[len(data) // 2] ^= 0x10
    Path(ref.path).write_bytes(bytes(data))
    with pytest.raises(CorruptPayload, match="damaged.safetensors is altered"):
        AdapterPool(host.loaded.model, host.fingerprint).get(ref)


def test_adapter_for_another_base_model_is_refused(trained, host: ModelHost) -> None:
    _, refs = trained
    bf16 = host.fingerprint.model_copy(update={"dtype": "bfloat16"})
    with pytest.raises(FingerprintMismatch, match="dtype"):
        load_adapter(refs["a"], bf16)
    other = host.fingerprint.model_copy(update={"model_id": "SomeOtherModel@0123456789ab"})
    with pytest.raises(FingerprintMismatch, match="model_id"):
        AdapterPool(host.loaded.model, other).get(refs["a"])


def test_an_adapter_stamped_for_another_base_is_re_evaluated_and_re_stamped_for_the_loaded_one(
    trained, team_adapters, host: ModelHost, tmp_path: Path
) -> None:
    """The real side of re-evaluation on a new base model (memos.models.reevaluate): bob's adapter, its header
    re-stamped as if trained on a bf16 base, evaluated on the loaded float32 model with one of its facts (one fact
    keeps it short): the same factors, the loaded model's fingerprint, the fact recalled, locality measured."""
    from dataclasses import replace

    from memos.models.reevaluate import reevaluate

    _, refs = trained
    original = load_adapter(refs["b"], host.fingerprint)
    bf16 = host.fingerprint.model_copy(update={"dtype": "bfloat16"})
    foreign = save_adapter(replace(original, info=replace(original.info, fingerprint=bf16)),
                           str(tmp_path / "bf16.adapter.safetensors"))
    with pytest.raises(FingerprintMismatch):
        load_adapter(foreign, host.fingerprint)
    fact = SourceFact(id=team_adapters["ids_b"][2], version=1, text=FACTS_B[2])
    result = reevaluate(host, [fact], foreign)
    assert not result.cancelled and result.payload.info.fingerprint == host.fingerprint
    e = result.evaluation
    assert e.facts == 1 and e.recall_with == 1.0 and e.recall_without == 0.0, e.misses
    assert e.steps == original.info.evaluation["steps"]  # how it was trained stays
    assert [a["correct"] for a in e.answers] == [True] * e.questions and "4826" in e.answers[0]["reply"]
    again = load_adapter(save_adapter(result.payload, str(tmp_path / "restamped.adapter.safetensors")),
                         host.fingerprint)
    assert all(torch.equal(again.weights[m][0], original.weights[m][0]) for m in original.weights)


def test_distillation_can_be_cancelled_and_reports_progress(host: ModelHost, before) -> None:
    cancel = threading.Event()
    seen: list[DistillProgress] = []

    def progress(p: DistillProgress) -> None:
        seen.append(p)
        if p.step == 2:
            cancel.set()

    facts = [SourceFact(id=f"m_b00000000000000{i}", version=1, text=t) for i, t in enumerate(FACTS_B)]
    result = distill(host, facts, CONFIG.model_copy(update={"replay_weight": 0.0}), progress=progress, cancel=cancel)
    assert result.cancelled and result.payload is None and result.evaluation is None
    assert result.steps_done == 2 and [p.step for p in seen] == [1, 2]
    assert seen[0].phase == "train" and seen[0].loss is not None
    assert weights_digest(host.loaded.model) == before["digest"]


def test_training_from_cached_lower_layers_gives_the_whole_models_loss(host: ModelHost) -> None:
    """With only the top layers adapted, training runs them from the frozen layers' output computed once: the loss
    and the early-stop hits are those of the whole model run on the same examples."""
    import random
    from dataclasses import replace

    from memos.models import distill as d

    work = copy.deepcopy(host.loaded.model)
    work.requires_grad_(False)
    facts = [SourceFact(id=f"m_b00000000000000{i}", version=1, text=t) for i, t in enumerate(FACTS_B)]
    examples, _ = d._build_examples(host.loaded.tokenizer, facts)
    replay = d._replay_examples(host.loaded.tokenizer)
    pad = d._pad_id(work)
    lower = d._LowerCache.build(work, 24, [examples, replay])
    cached, cached_replay = replace(examples, lower=lower), replace(replay, lower=lower)
    batch = examples.examples[:6]
    with torch.no_grad():
        whole, hits = d._fact_loss(work, batch, examples, pad)
        top, top_hits = d._fact_loss(work, batch, cached, pad)
        assert abs(float(whole) - float(top)) < 1e-4
        assert {id(e): h for e, h in hits} == {id(e): h for e, h in top_hits}
        replay_batch = replay.fixed(2, random.Random(0))[:1]
        reference = d._replay_references(work, replay_batch, cached_replay, pad)
        assert abs(float(d._replay_kl(work, replay_batch[0], reference[0], cached_replay, pad))) < 1e-3
    assert len(work.get_decoder().layers) == work.config.num_hidden_layers  # the slice is undone


def test_a_packed_batch_gives_each_example_what_it_gives_alone(host: ModelHost) -> None:
    """Packing (``LoraConfig.pack``): a batch run as one sequence, the chat prefix once, each example attending to
    itself and that prefix: every example's hidden states are those of running it alone, so the loss and the
    early-stop hits are the unpacked ones, from the whole model and from the cached lower layers."""
    from dataclasses import replace

    from memos.models import distill as d

    work = copy.deepcopy(host.loaded.model)
    work.requires_grad_(False)
    facts = [SourceFact(id=f"m_b00000000000000{i}", version=1, text=t) for i, t in enumerate(FACTS_B)]
    examples, _ = d._build_examples(host.loaded.tokenizer, facts)
    pad = d._pad_id(work)
    batch = examples.examples[::-1]  # chats and statements interleaved
    assert {e.prefixed for e in batch} == {True, False}
    lower = d._LowerCache.build(work, 24, [examples])
    with torch.no_grad():
        packed = d._packed(work, batch, replace(examples, pack=True))
        for e, where in zip(batch, packed.where, strict=True):
            alone = work.get_decoder()(input_ids=torch.tensor([(examples.prefix if e.prefixed else ()) + e.ids]))
            assert torch.allclose(alone.last_hidden_state[0], packed.hidden[where], atol=1e-3)
        whole, hits = d._fact_loss(work, batch, examples, pad)
        for variant in (replace(examples, pack=True), replace(examples, pack=True, lower=lower)):
            loss, packed_hits = d._fact_loss(work, batch, variant, pad)
            assert abs(float(whole) - float(loss)) < 1e-4
            assert {id(e): h for e, h in hits} == {id(e): h for e, h in packed_hits}


def test_context_teacher_targets_are_the_model_answering_with_the_memory_in_front(host: ModelHost) -> None:
    """Context distillation's examples: the teacher (the model with each memory's block in front) answers the
    trained questions, and each labelled token of the memory-free student example has the teacher's top-k
    distribution as its target."""
    from memos.bench.synthetic_facts import synthetic_facts
    from memos.models import distill as d

    facts = [SourceFact(id=i, version=1, text=t) for i, t in synthetic_facts(3, 0)]
    config = LoraConfig(teacher="context", teacher_top_k=8)
    prefix = d._chat_prefix(host.loaded.tokenizer)
    with torch.no_grad():
        examples, teacher_recall = d._context_examples(host.loaded.model, host.loaded.tokenizer, facts, prefix, config,
                                                       None)
    assert teacher_recall == 1.0  # with the fact in front, the base model answers each question (measured)
    questions = [e for e in examples.examples if e.question]
    assert len(questions) == 3 and all(e.prefixed for e in questions)  # the student's prompt is memory-free
    for e in examples.examples:
        index, probs = e.soft
        labelled = sum(1 for t in e.labels[1:] if t != -100)
        assert index.shape == probs.shape == (labelled, 8)
        assert torch.allclose(probs.sum(-1), torch.ones(labelled))


def test_a_context_distilled_adapter_recalls_what_the_base_model_does_not(host: ModelHost) -> None:
    """Context distillation (``teacher="context"``): the adapter learns from the model answering with each fact's
    block in front (the KV cache an activation memory holds), never from the canonical answers, and afterwards
    answers closed-book, where the base model knows none of the invented facts. A small recipe (3 facts, the top
    half of the layers, hard targets: the teacher's greedy replies); measured: recall 100 % (base 0 %), held-out
    67 %, locality +0.067, 20 steps."""
    from memos.bench.synthetic_facts import synthetic_facts

    facts = [SourceFact(id=i, version=1, text=t) for i, t in synthetic_facts(3, 0)]
    config = LoraConfig(teacher="context", top_layers=0.5, pack=True)  # hard targets (teacher_top_k=1): the default
    e = distill(host, facts, config).evaluation
    assert e is not None and e.teacher == "context" and e.teacher_recall == 1.0
    assert e.recall_without == 0.0
    assert e.recall_with >= 2 / 3, e.misses  # at least two of the three facts, from the teacher alone
    assert abs(e.locality_delta) < 0.1

