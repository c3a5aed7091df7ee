"""Any local Hugging Face causal-LM directory works as the model (docs/activation.md, "A bigger model").

No model bigger than the bundled one can be downloaded here, so the point (the mechanics, not the answers) is shown
on tiny random models written with transformers' ``save_pretrained``: a Llama-like and a Qwen2-like one (grouped-query
attention, RoPE; Qwen2 with biased q/k/v projections), with a byte-level BPE tokenizer trained on the spot and a
ChatML chat template. Through the normal settings (``Settings.model`` = the directory) a memory is migrated to
activation memory, with and without compression, and ``generate`` with the injected cache gives exactly the tokens
of the same memory prefilled as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from memos.client import Memos
from memos.types import Kind

pytestmark = pytest.mark.integration

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CORPUS = ["Mara Quill keeps the brass key in the lighthouse.", "Tomas Reyk keeps the red notebook in the cellar.",
          "Where does Tomas keep the notebook? The code for the blue locker is 4739.", "Relevant memory:"] * 20
FACT = "Mara Quill keeps the brass key in the lighthouse. Tomas Reyk keeps the red notebook in the cellar."
QUESTION = "Where does Tomas Reyk keep the red notebook?"


def tiny_model_dir(root: Path, family: str) -> Path:
    """A random ``family`` ("llama" or "qwen2") causal LM and its tokenizer, saved as a Hugging Face directory."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    sizes = {"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "initializer_range": 0.3,  # wide logits: no near-ties for greedy decoding to flip on
             "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
             "pad_token_id": tokenizer.pad_token_id, "tie_word_embeddings": False}
    torch.manual_seed(0)
    model = (LlamaForCausalLM(LlamaConfig(**sizes)) if family == "llama"
             else Qwen2ForCausalLM(Qwen2Config(**sizes, use_sliding_window=False)))
    out = root / f"tiny-{family}"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_local_hf_model_directory_serves_activation_memory_exactly(tmp_path, family) -> None:
    directory = tiny_model_dir(tmp_path, family)
    mem = Memos.embedded(tmp_path / "home", "agent:alice", model=str(directory), model_device="cpu",
                         model_dtype="float32", embedder="hashing")
    try:
        mem.create_cube("team/kv")
        as_text = mem.write("team/kv", FACT)
        cached = mem.write("team/kv", FACT)
        squeezed = mem.write("team/kv", FACT)
        (a,) = mem.migrate(cached.id, "activation")
        (b,) = mem.migrate(squeezed.id, "activation", compression="int4")
        assert a.kind == b.kind == Kind.ACTIVATION
        assert a.fingerprint.model_id == f"tiny-{family}" and a.fingerprint.dtype == "float32"
        text = mem.generate(QUESTION, memory=[as_text.id], max_new_tokens=12)
        kv = mem.generate(QUESTION, memory=[cached.id], max_new_tokens=12)
        int4 = mem.generate(QUESTION, memory=[squeezed.id], max_new_tokens=12)
        assert text.plan.items[0].use == "text" and kv.plan.items[0].use == "kv" and int4.plan.items[0].use == "kv"
        assert kv.prompt_tokens == text.prompt_tokens and kv.cached_tokens > 0 == text.cached_tokens
        assert kv.text == text.text and kv.text  # the injected cache equals the prefill, token for token
        assert int4.cached_tokens == kv.cached_tokens  # lossy, so only the mechanics are asserted
    finally:
        mem.close()
