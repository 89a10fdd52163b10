"""Pretrained checkpoints: HF folders written by transformers load with the logits transformers
computed (tests/fixtures/pretrained, made by tests/make_pretrained_fixtures.py), and what we save
loads back, in tinygrad_lm and (when installed) in transformers."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinygrad_lm.hub import ModelNotFoundError, load_pretrained_tokenizer, resolve
from tinygrad_lm.hub.hf_config import UnsupportedModelError, config_from_hf, config_to_hf
from tinygrad_lm.hub.hf_weights import WeightsError
from tinygrad_lm.hub.safetensors_file import read_safetensors, write_safetensors
from tinygrad_lm.models import GPT, GPTConfig

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
NAMES = sorted(d.name for d in FIXTURES.iterdir() if (d / "reference.json").is_file())
HAVE_TRANSFORMERS = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
needs_transformers = pytest.mark.skipif(not HAVE_TRANSFORMERS, reason="needs torch and transformers (the reference)")


def reference(name):
    ref = json.loads((FIXTURES / name / "reference.json").read_text())
    return np.array(ref["input_ids"]), np.array(ref["logits"], np.float32)


def logits_of(model, ids):
    out, _ = model(ids, all_logits=True)
    return out.data


def test_every_family_has_a_fixture():
    assert {"gpt2-tiny", "llama-tiny", "llama-tiny-headdim", "llama-tiny-bf16-sharded", "llama3-tiny-rope-scaling",
            "qwen2-tiny", "mistral-tiny"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_transformers(name):
    ids, want = reference(name)
    model = GPT.from_pretrained(FIXTURES / name)
    assert not model.training and model.transformer.wte.weight.dtype == np.float32
    np.testing.assert_allclose(logits_of(model, ids), want, rtol=1e-5, atol=1e-5)


def test_config_of_each_family():
    c = GPT.from_pretrained(FIXTURES / "llama-tiny").config
    assert (c.pos, c.norm, c.mlp, c.bias, c.n_head, c.n_kv_head, c.hs, c.mlp_hidden, c.norm_eps, c.rope_theta,
            c.tie_weights) == ("rope", "rmsnorm", "swiglu", False, 6, 2, 8, 100, 1e-6, 5000.0, False)
    c = GPT.from_pretrained(FIXTURES / "gpt2-tiny").config
    assert (c.pos, c.norm, c.mlp, c.bias, c.tie_weights, c.vocab_size) == ("learned", "layernorm", "gelu_tanh",
                                                                            True, True, 101)
    c = GPT.from_pretrained(FIXTURES / "qwen2-tiny").config
    assert (c.bias, c.qkv_bias) == (False, True)
    assert GPT.from_pretrained(FIXTURES / "llama-tiny-headdim").config.head_dim == 16
    assert GPT.from_pretrained(FIXTURES / "llama3-tiny-rope-scaling").config.rope_scaling["rope_type"] == "llama3"


def test_float64_and_cached_generation_match():
    ids, want = reference("llama-tiny")
    m64 = GPT.from_pretrained(FIXTURES / "llama-tiny", dtype="float64")
    assert m64.transformer.wte.weight.dtype == np.float64
    np.testing.assert_allclose(logits_of(m64, ids), want, rtol=1e-5, atol=1e-5)
    with_cache = m64.generate(ids[:1, :4], 12, temperature=0)
    without = m64.generate(ids[:1, :4], 12, temperature=0, use_cache=False)
    np.testing.assert_array_equal(with_cache.data, without.data)


def test_gpt2_keys_without_the_transformer_prefix(tmp_path):
    """GPT2Model checkpoints (no LM head) name tensors "h.0..." rather than "transformer.h.0..."."""
    src = FIXTURES / "gpt2-tiny"
    tensors = read_safetensors(src / "model.safetensors")
    write_safetensors(tmp_path / "model.safetensors", {k.removeprefix("transformer."): v for k, v in tensors.items()},
                      {"format": "pt"})
    shutil.copy(src / "config.json", tmp_path / "config.json")
    ids, want = reference("gpt2-tiny")
    np.testing.assert_allclose(logits_of(GPT.from_pretrained(tmp_path), ids), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "llama-tiny-headdim", "qwen2-tiny",
                                  "llama3-tiny-rope-scaling"])
def test_save_pretrained_round_trip(name, tmp_path):
    ids, _ = reference(name)
    model = GPT.from_pretrained(FIXTURES / name)
    model.save_pretrained(tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors"]
    again = GPT.from_pretrained(tmp_path / "out")
    assert again.config == model.config
    np.testing.assert_array_equal(logits_of(again, ids), logits_of(model, ids))


@needs_transformers
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "llama-tiny-headdim", "qwen2-tiny",
                                  "llama3-tiny-rope-scaling"])
def test_transformers_loads_what_we_save(name, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM
    ids, want = reference(name)
    GPT.from_pretrained(FIXTURES / name).save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf).__name__ == json.loads((FIXTURES / name / "config.json").read_text())["architectures"][0]
    with torch.no_grad():
        got = hf(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_model_we_train_saves_for_transformers(tmp_path):
    """Our own Llama-style config (SwiGLU default hidden, tied) survives config_to_hf -> config_from_hf."""
    c = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, bias=False,
                  pos="rope", norm="rmsnorm", mlp="swiglu")
    model = GPT(c)
    model.save_pretrained(tmp_path)
    again = GPT.from_pretrained(tmp_path)
    ids = np.arange(10).reshape(1, 10)
    np.testing.assert_array_equal(logits_of(again, ids), logits_of(model.eval(), ids))
    assert config_from_hf(config_to_hf(c)).mlp_hidden == again.config.mlp_hidden


def test_adjacent_rope_pairing_equals_half_with_permuted_qk():
    """llama.cpp's adjacent-pair RoPE on q/k rows permuted per head (the HF -> GGUF permutation) is
    HF's rotate_half RoPE on the original rows: the same model, so the same logits."""
    ids, want = reference("llama-tiny")
    model = GPT.from_pretrained(FIXTURES / "llama-tiny")
    c = model.config
    state = model.state_dict()
    adj = GPT(GPTConfig(**{**c.to_dict(), "rope_pairing": "adjacent"}))

    def permute(w, heads):  # HF (rotate_half) row order -> llama.cpp (adjacent pairs), per head
        return w.reshape(heads, 2, c.hs // 2, -1).swapaxes(1, 2).reshape(w.shape)
    q, kv = c.n_head * c.hs, c.n_kv_head * c.hs
    for i in range(c.n_layer):
        w = state[f"transformer.h.{i}.attn.c_attn.weight"]
        state[f"transformer.h.{i}.attn.c_attn.weight"] = np.concatenate(
            [permute(w[:q], c.n_head), permute(w[q:q + kv], c.n_kv_head), w[q + kv:]])
    adj.load_state_dict(state)
    np.testing.assert_allclose(logits_of(adj.eval(), ids), want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits_of(model, ids), logits_of(adj, ids) + 1) and \
        not np.allclose(logits_of(GPT(GPTConfig(**c.to_dict())).eval(), ids), want, atol=1e-2)


def test_unsupported_and_broken_checkpoints(tmp_path):
    shutil.copytree(FIXTURES / "llama-tiny", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    for change, message in [({"model_type": "bert", "architectures": ["BertModel"]}, "model_type 'bert'"),
                            ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
                            ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "yarn"),
                            ({"num_hidden_layers": 3}, "lacks weights.*transformer.h.2")]:
        (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises((UnsupportedModelError, WeightsError, ValueError), match=message):
            GPT.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, "hidden_size": 40}))
    with pytest.raises(ValueError, match="shape"):
        GPT.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        GPT.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="dtype"):
        GPT.from_pretrained(FIXTURES / "llama-tiny", dtype="float16")


def test_names_that_resolve_nowhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFoundError, match="not a file or folder"):
        resolve("no-such-model-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a config.json"):
        resolve(tmp_path / "empty")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((FIXTURES / "llama-tiny" / "config.json").read_text())
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelNotFoundError, match="never pickled"):
        GPT.from_pretrained(tmp_path / "bin")


def test_model_id_found_in_the_hf_cache(tmp_path, monkeypatch):
    """A model id resolves to the snapshot that refs/main names, as huggingface_hub lays out its cache."""
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(FIXTURES / "llama-tiny", snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve("someone/tiny-llama") == snap
    ids, want = reference("llama-tiny")
    np.testing.assert_allclose(logits_of(GPT.from_pretrained("someone/tiny-llama"), ids), want, rtol=1e-5, atol=1e-5)


def test_tokenizer_and_chat_template_saved_with_the_model(tmp_path):
    from tinygrad_lm.tokenizers import BPETokenizer
    text = "hello world, hello chat. " * 50
    tok = BPETokenizer.train(text, vocab_size=270, special_tokens=["<|im_start|>", "<|im_end|>"], progress=False)
    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    tok.set_chat_info(template, None, "<|im_end|>")
    c = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8, bias=False,
                  pos="rope", norm="rmsnorm", mlp="swiglu")
    GPT(c).save_pretrained(tmp_path, tokenizer=tok)
    again = load_pretrained_tokenizer(tmp_path)
    assert again.encode("hello chat") == tok.encode("hello chat")
    assert (again.chat_template, again.eos_token) == (template, "<|im_end|>")
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == tok.token_id("<|im_end|>")
    if HAVE_TRANSFORMERS:
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(tmp_path)
        assert hf.encode("hello chat, world") == tok.encode("hello chat, world")
        assert hf.eos_token == "<|im_end|>"


def test_llama3_rope_scaling_survives_gguf_as_frequency_factors(tmp_path):
    """GGUF stores Llama 3.1's RoPE scaling as rope_freqs.weight (per-frequency divisors): the model
    read back from our GGUF gives transformers' logits for the HF llama3 config."""
    ids, want = reference("llama3-tiny-rope-scaling")
    GPT.from_pretrained(FIXTURES / "llama3-tiny-rope-scaling").save_gguf(tmp_path / "m.gguf")
    again = GPT.from_pretrained(tmp_path / "m.gguf")
    assert again.config.rope_scaling["rope_type"] == "freq_factors"
    np.testing.assert_allclose(logits_of(again, ids), want, rtol=1e-5, atol=1e-5)
    again.save_gguf(tmp_path / "m2.gguf")  # and back out again
    np.testing.assert_allclose(logits_of(GPT.from_pretrained(tmp_path / "m2.gguf"), ids), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="save_gguf"):
        again.save_pretrained(tmp_path / "hf")


@pytest.mark.parametrize("dtype, tol", [("f32", 1e-5), ("f16", 2e-2), ("q8_0", 5e-2)])
def test_save_gguf_round_trip(dtype, tol, tmp_path):
    ids, want = reference("llama-tiny")
    GPT.from_pretrained(FIXTURES / "llama-tiny").save_gguf(tmp_path / "m.gguf", dtype)
    got = logits_of(GPT.from_pretrained(tmp_path / "m.gguf"), ids)
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="save_pretrained"):
        GPT.from_pretrained(FIXTURES / "gpt2-tiny").save_gguf(tmp_path / "g.gguf")
