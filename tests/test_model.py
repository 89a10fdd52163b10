"""The GPT model: float64 gradcheck of every config variant, overfitting one batch, KV-cache decoding
equal to full recomputation, generation (greedy, seeded, stop tokens, sliding window), GPT-2 names,
shapes and init, sizes, optimizer groups, config and forward errors, float32 end to end."""
import math

import numpy as np
import pytest

import tinygrad_lm as tg
import tinygrad_lm.models.gpt as gpt_module
from tinygrad_lm import Tensor
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.nn import LayerNorm, RMSNorm
from tinygrad_lm.optim import AdamW

from strategies import lying, parameters_as_inputs

VARIANTS = {
    "learned": {},
    "rope": dict(pos="rope"),
    "sinusoidal": dict(pos="sinusoidal"),
    "rmsnorm": dict(norm="rmsnorm"),
    "gelu_tanh": dict(mlp="gelu_tanh"),
    "swiglu": dict(mlp="swiglu"),
    "gqa": dict(n_kv_head=1),
    "no_bias": dict(bias=False),
    "untied": dict(tie_weights=False),
    "llama_like": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1, bias=False, tie_weights=False),
}

# variants that change how positions or keys/values enter the cache
CACHE_VARIANTS = {
    "learned": {},
    "rope": dict(pos="rope"),
    "sinusoidal": dict(pos="sinusoidal"),
    "gqa": dict(n_kv_head=2),
    "gqa_rope": dict(n_kv_head=1, pos="rope", norm="rmsnorm", mlp="swiglu"),
}


def tiny(seed=0, scale=None, **kw):
    """A tiny GPT; ``scale`` re-draws every parameter with that std (norm scales around 1) so that
    every path carries a sizeable signal, unlike GPT-2's 0.02 init."""
    cfg = dict(vocab_size=7, block_size=4, n_layer=2, n_embd=8, n_head=2)
    cfg.update(kw)
    tg.manual_seed(seed)
    model = GPT(GPTConfig(**cfg))
    if scale is not None:
        rng = np.random.default_rng(seed + 1000)
        for name, p in model.named_parameters():
            base = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0  # LayerNorm/RMSNorm scales
            p.data[...] = base + rng.normal(0.0, scale, p.shape)
    return model


def loss_of_parameters(model, idx, targets):
    """fn(*tensors) -> loss with ``tensors`` standing in for the model's parameters (ties kept),
    and a function that puts the original parameters back."""
    return parameters_as_inputs(model, lambda: model(idx, targets)[1])


# ---- gradient check of the whole model ---------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradcheck_tiny_gpt_float64(variant):
    model = tiny(scale=0.5, **VARIANTS[variant]).double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 7, (2, 4))
    targets = rng.integers(0, 7, (2, 4))
    targets[1, 2] = -1  # ignored position
    names = [n for n, _ in model.named_parameters()]
    params, fn, restore = loss_of_parameters(model, idx, targets)
    try:
        assert fn(*params).dtype == np.float64
        # every parameter along a random direction ...
        assert gradcheck(fn, params, directional=True, seed=0)
        # ... and element by element for a few small ones (last block, final norm, position-free)
        small = {"transformer.h.1.ln_2.weight", "transformer.ln_f.weight", "transformer.h.1.attn.c_attn.bias",
                 "transformer.h.0.mlp.c_proj.bias"}
        full = [p.detach().requires_grad_(n in small) for n, p in zip(names, params)]
        assert any(t.requires_grad for t in full)
        assert gradcheck(fn, full)
    finally:
        restore()
    assert model.parameters() == params


def test_gradcheck_catches_a_wrong_gradient():
    """The harness is not vacuous: a loss whose numeric evaluations (run under no_grad) differ from
    the one backward saw by 1% fails the directional check."""
    model = tiny(scale=0.5).double()
    rng = np.random.default_rng(1)
    idx, targets = rng.integers(0, 7, (2, 4)), rng.integers(0, 7, (2, 4))
    params, fn, restore = loss_of_parameters(model, idx, targets)

    try:
        with pytest.raises(tg.GradcheckError):
            gradcheck(lying(fn), params, directional=True)
    finally:
        restore()


# ---- training ----------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["learned", "llama_like"])
def test_overfits_one_batch(variant):
    model = tiny(block_size=8, n_layer=1, n_embd=16, **VARIANTS[variant])
    data = np.random.default_rng(0).integers(0, 7, (4, 9))
    x, y = data[:, :-1], data[:, 1:]
    opt = model.configure_optimizers(weight_decay=0.0, learning_rate=2e-2)
    _, first = model(x, y)
    assert abs(first.item() - math.log(7)) < 0.2  # GPT-2 init starts near uniform
    losses = []
    for _ in range(300):
        _, loss = model(x, y)
        losses.append(loss.item())
        if losses[-1] < 0.1:
            break
        model.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.1, f"loss after {len(losses)} steps: {losses[-1]:.4f}"


# ---- forward --------------------------------------------------------------------------------------

def numpy_cross_entropy(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    keep = targets != -1
    return -logp[keep, targets[keep]].mean()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float32_end_to_end(variant):
    model = tiny(**VARIANTS[variant])
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, 7, (3, 4)), rng.integers(0, 7, (3, 4))
    targets[0, 0] = -1
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 4, 7) and logits.dtype == np.float32
    assert loss.shape == () and loss.dtype == np.float32
    np.testing.assert_allclose(loss.item(), numpy_cross_entropy(logits.data.astype(np.float64), targets), rtol=1e-5)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == np.float32 and p.grad.shape == p.shape, name
        assert np.isfinite(p.grad).all(), name
    last, none = model(idx)
    assert none is None and last.shape == (3, 1, 7) and last.dtype == np.float32
    np.testing.assert_allclose(last.data[:, 0], logits.data[:, -1], rtol=1e-5, atol=1e-6)
    every, _ = model(idx, all_logits=True)
    np.testing.assert_allclose(every.data, logits.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["learned", "rope", "sinusoidal", "gqa"])
def test_changing_a_future_token_leaves_earlier_logits_alone(variant):
    model = tiny(scale=0.5, block_size=6, **VARIANTS[variant])
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    base, _ = model(idx, all_logits=True)
    for t in range(6):
        changed = idx.copy()
        changed[0, t] = (changed[0, t] + 1) % 7
        out, _ = model(changed, all_logits=True)
        np.testing.assert_array_equal(out.data[:, :t], base.data[:, :t])
        assert not np.allclose(out.data[:, t:], base.data[:, t:])


def test_positions_matter():
    """Each position scheme makes the model order-aware (a bag-of-tokens bug would not be)."""
    for variant in ("learned", "rope", "sinusoidal"):
        model = tiny(scale=0.5, **VARIANTS[variant])
        a, _ = model(np.array([[1, 2, 3]]))
        b, _ = model(np.array([[2, 1, 3]]))
        assert not np.allclose(a.data, b.data), variant


def test_forward_errors():
    model = tiny()
    with pytest.raises(ValueError, match=r"5.*block_size 4"):
        model(np.zeros((1, 5), np.int64))
    with pytest.raises(ValueError, match="float"):
        model(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="float"):
        model(Tensor(np.zeros((1, 3), np.float32)))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        model(np.zeros(3, np.int64))
    with pytest.raises(IndexError, match="7"):
        model(np.array([[0, 7]]))
    cache = model.new_cache(1)
    model(np.array([[1, 2, 3]]), cache=cache)
    with pytest.raises(ValueError, match=r"5.*block_size 4"):
        model(np.array([[1, 2]]), cache=cache)
    out, _ = model(Tensor(np.array([[1, 2]])))  # integer Tensors and lists are fine
    out2, _ = model([[1, 2]])
    np.testing.assert_array_equal(out.data, out2.data)


def test_dropout_only_in_training():
    model = tiny(scale=0.5, dropout=0.3)
    idx = np.array([[1, 2, 3, 4]])
    tg.manual_seed(1)
    a, _ = model(idx, all_logits=True)
    b, _ = model(idx, all_logits=True)
    assert not np.allclose(a.data, b.data)
    model.eval()
    a, _ = model(idx, all_logits=True)
    b, _ = model(idx, all_logits=True)
    np.testing.assert_array_equal(a.data, b.data)


# ---- KV cache == full recomputation -------------------------------------------------------------

@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
def test_kv_cache_logits_equal_full_recomputation(variant):
    model = tiny(scale=0.5, vocab_size=11, block_size=8, n_embd=16, n_head=4, **CACHE_VARIANTS[variant]).eval()
    idx = np.random.default_rng(0).integers(0, 11, (3, 8))
    with tg.no_grad():
        full, _ = model(idx, all_logits=True)                            # (3, 8, 11)
        for chunks in ([1] * 8, [3, 1, 1, 1, 2], [5, 3], [8]):
            cache = model.new_cache(3)
            got, start = [], 0
            for n in chunks:
                logits, _ = model(idx[:, start:start + n], cache=cache, all_logits=True)
                got.append(logits.data)
                start += n
                assert cache.pos == start
                last, _ = model(idx[:, :start])                          # last-position logits agree too
                np.testing.assert_allclose(logits.data[:, -1:], last.data, rtol=1e-4, atol=1e-5)
            got = np.concatenate(got, axis=1)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, full.data, rtol=1e-4, atol=1e-5, err_msg=str(chunks))
        with pytest.raises(ValueError, match="block_size"):
            model(idx[:, :1], cache=cache)                               # the cache is full


def test_kv_cache_in_float64_is_exact_to_rounding():
    model = tiny(scale=0.5, block_size=6, pos="rope", n_kv_head=1).double().eval()
    idx = np.random.default_rng(0).integers(0, 7, (2, 6))
    full, _ = model(idx, all_logits=True)
    cache = model.new_cache(2)
    assert cache.keys[0].dtype == np.float64
    steps = [model(idx[:, t:t + 1], cache=cache)[0].data for t in range(6)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full.data, rtol=1e-11, atol=1e-12)


# ---- generation ---------------------------------------------------------------------------------

def gen_model(variant="learned", seed=0):
    return tiny(seed=seed, scale=0.6, vocab_size=11, block_size=8, n_embd=16, n_head=4,
                **CACHE_VARIANTS[variant]).eval()


def greedy_reference(model, prompt, n):
    """Greedy decoding by full recomputation over the documented window: at most block_size tokens;
    once it overflows, keep only the newest block_size - block_size // 4 tokens."""
    block = model.config.block_size
    keep = max(1, block - block // 4)
    window, out = list(prompt[-block:]), []
    for _ in range(n):
        if len(window) > block:
            window = window[-keep:]
        logits, _ = model(np.array([window]))
        tok = int(logits.data[0, -1].argmax())
        window.append(tok)
        out.append(tok)
    return out


class RecordingSampler:
    """Wraps sampling.sample to record the logits every decoding step saw."""

    def __init__(self):
        self.logits = []

    def __call__(self, logits, *args):
        self.logits.append(np.array(logits))
        return REAL_SAMPLE(logits, *args)


REAL_SAMPLE = gpt_module.sample


@pytest.mark.parametrize("variant", list(CACHE_VARIANTS))
@pytest.mark.parametrize("prompt_len,n", [(3, 20), (12, 10), (8, 9), (1, 1), (20, 0)])
def test_generate_with_cache_equals_without(variant, prompt_len, n, monkeypatch):
    model = gen_model(variant)
    prompt = np.random.default_rng(prompt_len).integers(0, 11, (2, prompt_len))
    seen = {}
    for use_cache in (True, False):
        rec = RecordingSampler()
        monkeypatch.setattr(gpt_module, "sample", rec)
        out = model.generate(prompt, n, temperature=0, use_cache=use_cache)
        assert isinstance(out, Tensor) and out.dtype == np.int64 and out.shape == (2, prompt_len + n)
        np.testing.assert_array_equal(out.data[:, :prompt_len], prompt)
        seen[use_cache] = (out.data, rec.logits)
    (a, la), (b, lb) = seen[True], seen[False]
    np.testing.assert_array_equal(a, b)
    assert len(la) == len(lb) == n
    for step, (x, y) in enumerate(zip(la, lb)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
    if n:
        assert [int(t) for t in a[0, prompt_len:]] == greedy_reference(model, prompt[0], n)


def test_generate_runs_far_past_block_size_and_refills_the_window():
    model = gen_model("rope")
    prompt = np.array([[1, 2, 3]])
    out = model.generate(prompt, 30, temperature=0)
    assert out.shape == (1, 33)
    assert [int(t) for t in out.data[0, 3:]] == greedy_reference(model, prompt[0], 30)
    streamed = list(model.stream(prompt[0], 30, temperature=0))
    assert streamed == [int(t) for t in out.data[0, 3:]] and all(type(t) is int for t in streamed)


def test_block_size_one_window():
    model = tiny(scale=0.6, block_size=1).eval()
    a = model.generate(np.array([[3, 1]]), 5, temperature=0, use_cache=True)
    b = model.generate(np.array([[3, 1]]), 5, temperature=0, use_cache=False)
    np.testing.assert_array_equal(a.data, b.data)
    assert [int(t) for t in a.data[0, 2:]] == greedy_reference(model, [3, 1], 5)


def test_greedy_is_deterministic_and_ignores_seed():
    model = gen_model("gqa")
    prompt = np.array([[4, 2, 7]])
    runs = [model.generate(prompt, 12, temperature=0, seed=s).data for s in (None, 0, 1)]
    tg.manual_seed(123)
    runs.append(model.generate(prompt, 12, temperature=0, top_k=3, top_p=0.5).data)
    for r in runs[1:]:
        np.testing.assert_array_equal(r, runs[0])


def test_seeded_sampling_is_reproducible():
    model = gen_model("rope")
    prompt = np.array([[1, 2], [3, 4]])
    kw = dict(temperature=1.0, top_k=6, top_p=0.95)
    a = model.generate(prompt, 15, seed=7, **kw).data
    b = model.generate(prompt, 15, seed=7, **kw).data
    c = model.generate(prompt, 15, seed=7, use_cache=False, **kw).data
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    others = [model.generate(prompt, 15, seed=s, **kw).data for s in range(8, 12)]
    assert any((o != a).any() for o in others)
    # the global generator: manual_seed makes unseeded generation reproducible
    tg.manual_seed(5)
    d = model.generate(prompt, 15, **kw).data
    tg.manual_seed(5)
    e = model.generate(prompt, 15, **kw).data
    np.testing.assert_array_equal(d, e)
    assert list(model.stream(prompt[0], 15, seed=7, **kw)) == [int(t) for t in model.generate(
        prompt[:1], 15, seed=7, **kw).data[0, 2:]]


def test_stop_token_ends_generation():
    model = gen_model("learned")
    prompt = np.array([[1, 2, 3]])
    free = [int(t) for t in model.generate(prompt, 20, temperature=0).data[0, 3:]]
    stop = free[4]
    first = free.index(stop)
    out = model.generate(prompt, 20, temperature=0, stop=stop)
    assert [int(t) for t in out.data[0, 3:]] == free[:first + 1]
    assert list(model.stream(prompt[0], 20, temperature=0, stop=[99, stop])) == free[:first + 1]


def test_stop_tokens_with_a_batch(monkeypatch):
    """Each row repeats the stop token it emitted; generation ends when every row has stopped."""
    script = iter([[1, 2], [6, 3], [4, 4], [0, 5], [1, 1]])
    monkeypatch.setattr(gpt_module, "sample", lambda *a: np.array(next(script)))
    model = gen_model()
    out = model.generate(np.array([[0], [0]]), 10, stop=[5, 6])
    np.testing.assert_array_equal(out.data, [[0, 1, 6, 6, 6], [0, 2, 3, 4, 5]])
    script = iter([[1, 5], [2, 2], [3, 3]])
    out = model.generate(np.array([[0], [0]]), 3, stop=5)  # the limit comes first
    np.testing.assert_array_equal(out.data, [[0, 1, 2, 3], [0, 5, 5, 5]])


def test_generate_argument_errors():
    model = gen_model()
    prompt = np.array([[1, 2]])
    for kw, word in [(dict(temperature=-1.0), "-1.0"), (dict(top_k=0), "top_k"), (dict(top_p=1.5), "1.5"),
                     (dict(top_p=0.0), "top_p"), (dict(temperature=float("nan")), "nan")]:
        with pytest.raises(ValueError, match=word):
            model.generate(prompt, 3, **kw)
    with pytest.raises(ValueError, match="-1"):
        model.generate(prompt, -1)
    with pytest.raises(ValueError, match="T >= 1"):
        model.generate(np.zeros((1, 0), np.int64), 3)
    np.testing.assert_array_equal(model.generate(prompt, 0).data, prompt)
    assert model.generate([5, 6], 2, temperature=0).shape == (1, 4)  # 1-D prompt is one row
    for bad in (np.array([[1.7, 2.0]]), [1.5, 2.5], np.array([[True, False]])):  # never silently truncated
        with pytest.raises(TypeError, match="integer token ids.*dtype"):
            model.generate(bad, 2)
        with pytest.raises(TypeError, match="integer token ids"):
            next(model.stream(bad, 2))


# ---- GPT-2 architecture: names, shapes, init, sizes ------------------------------------------------

def gpt2_names_and_shapes(V, B, C, L):
    out = [("transformer.wte.weight", (V, C)), ("transformer.wpe.weight", (B, C))]
    for i in range(L):
        h = f"transformer.h.{i}."
        out += [(h + "ln_1.weight", (C,)), (h + "ln_1.bias", (C,)),
                (h + "attn.c_attn.weight", (3 * C, C)), (h + "attn.c_attn.bias", (3 * C,)),
                (h + "attn.c_proj.weight", (C, C)), (h + "attn.c_proj.bias", (C,)),
                (h + "ln_2.weight", (C,)), (h + "ln_2.bias", (C,)),
                (h + "mlp.c_fc.weight", (4 * C, C)), (h + "mlp.c_fc.bias", (4 * C,)),
                (h + "mlp.c_proj.weight", (C, 4 * C)), (h + "mlp.c_proj.bias", (C,))]
    return out + [("transformer.ln_f.weight", (C,)), ("transformer.ln_f.bias", (C,)), ("lm_head.weight", (V, C))]


def test_gpt2_state_dict_names_and_shapes():
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8))
    sd = model.state_dict()
    assert [(k, v.shape) for k, v in sd.items()] == gpt2_names_and_shapes(11, 6, 8, 2)
    assert all(v.dtype == np.float32 for v in sd.values())
    assert model.lm_head.weight is model.transformer.wte.weight
    np.testing.assert_array_equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    assert [n for n, _ in model.named_parameters()] == [k for k in sd if k != "lm_head.weight"]
    assert model.transformer.keys() == ["wte", "wpe", "drop", "h", "ln_f"]
    # a second model loads it by name and computes the same thing, still tied
    other = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8))
    assert other.load_state_dict(sd) == ([], [])
    assert other.lm_head.weight is other.transformer.wte.weight
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    np.testing.assert_array_equal(model(idx, all_logits=True)[0].data, other(idx, all_logits=True)[0].data)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_shapes_of_variants(variant):
    kw = VARIANTS[variant]
    model = tiny(**kw)
    c = model.config
    C, hs, nkv = 8, 4, c.n_kv_head
    sd = model.state_dict()
    assert ("transformer.wpe.weight" in sd) == (c.pos == "learned")
    assert any(k.endswith("bias") for k in sd) == c.bias
    assert sd["transformer.h.0.attn.c_attn.weight"].shape == (C + 2 * nkv * hs, C)
    hidden = 24 if c.mlp == "swiglu" else 32
    assert sd["transformer.h.0.mlp.c_fc.weight"].shape == ((2 * hidden if c.mlp == "swiglu" else hidden), C)
    assert sd["transformer.h.0.mlp.c_proj.weight"].shape == (C, hidden)
    norm_type = RMSNorm if c.norm == "rmsnorm" else LayerNorm
    assert isinstance(model.transformer.ln_f, norm_type) and isinstance(model.transformer.h[1].ln_2, norm_type)
    assert (model.lm_head.weight is model.transformer.wte.weight) == c.tie_weights
    assert "lm_head.weight" in sd and (len(model.parameters()) == len(sd) - c.tie_weights)


def test_gpt2_init_statistics():
    L, C = 4, 64
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=L, n_head=4, n_embd=C, tie_weights=False))
    groups = {"c_proj": [], "other": []}
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p.data == 0).all(), name
        elif p.ndim == 1:
            assert (p.data == 1).all(), name                                 # norm scales
        elif name.endswith("c_proj.weight"):
            groups["c_proj"].append(p.data.ravel())
        else:
            groups["other"].append(p.data.ravel())
            assert abs(p.data.std() - 0.02) < 0.002 and abs(p.data.mean()) < 0.002, name
    proj = np.concatenate(groups["c_proj"])
    assert len(groups["c_proj"]) == 2 * L and len(groups["other"]) == 3 + 2 * L   # wte, wpe, lm_head
    assert abs(proj.std() - 0.02 / math.sqrt(2 * L)) < 0.0005 and abs(proj.mean()) < 0.0005
    for p in groups["c_proj"]:
        assert abs(p.std() - 0.02 / math.sqrt(2 * L)) < 0.001


def test_num_params_excludes_wpe():
    V, B, C, L = 11, 6, 8, 2
    model = GPT(GPTConfig(vocab_size=V, block_size=B, n_layer=L, n_head=2, n_embd=C))
    expect = V * C + L * (12 * C * C + 13 * C) + 2 * C
    assert model.num_params() == expect
    assert model.num_params(non_embedding=False) == expect + B * C == model.num_parameters()
    assert model.num_parameters() == sum(p.size for p in model.parameters())
    untied = GPT(GPTConfig(vocab_size=V, block_size=B, n_layer=L, n_head=2, n_embd=C, tie_weights=False))
    assert untied.num_params() == expect + V * C
    rope = GPT(GPTConfig(vocab_size=V, block_size=B, n_layer=L, n_head=2, n_embd=C, pos="rope"))
    assert rope.num_params() == rope.num_params(non_embedding=False) == expect


def test_flops_per_token():
    c = GPTConfig(vocab_size=11, block_size=6, n_layer=3, n_head=2, n_embd=8)
    model = GPT(c)
    N = model.num_params()
    assert model.flops_per_token() == 6 * N + 12 * 3 * 2 * 4 * 6
    assert isinstance(model.flops_per_token(), int)
    gqa = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=3, n_head=2, n_kv_head=1, n_embd=8))
    assert gqa.flops_per_token() == 6 * gqa.num_params() + 12 * 3 * 8 * 6


@pytest.mark.parametrize("variant", ["learned", "no_bias", "llama_like"])
def test_configure_optimizers_decays_only_matrices(variant):
    model = tiny(**VARIANTS[variant])
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95), eps=1e-7)
    assert isinstance(opt, AdamW) and len(opt.param_groups) == 2
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    for g in opt.param_groups:
        assert g["lr"] == 3e-4 and tuple(g["betas"]) == (0.9, 0.95) and g["eps"] == 1e-7
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == {n for n, p in model.named_parameters() if p.ndim >= 2}
    assert {names[id(p)] for p in no_decay["params"]} == {n for n, p in model.named_parameters() if p.ndim < 2}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(model.parameters())
    assert "transformer.wte.weight" in {names[id(p)] for p in decay["params"]}


# ---- config validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,words", [
    (dict(vocab_size=-1), ["vocab_size", "-1"]),
    (dict(block_size=0), ["block_size", "0"]),
    (dict(n_layer=-3), ["n_layer", "-3"]),
    (dict(n_head=-2), ["n_head", "-2"]),
    (dict(n_kv_head=-1), ["n_kv_head", "-1"]),
    (dict(n_embd=0), ["n_embd", "0"]),
    (dict(n_embd=2.5), ["n_embd", "2.5"]),
    (dict(n_layer=True), ["n_layer", "True"]),
    (dict(n_embd=10, n_head=3), ["n_embd", "10", "n_head", "3"]),
    (dict(n_embd=8, n_head=4, n_kv_head=3), ["n_head", "4", "n_kv_head", "3"]),
    (dict(n_embd=8, n_head=2, n_kv_head=4), ["n_kv_head", "4"]),
    (dict(pos="alibi"), ["pos", "alibi"]),
    (dict(norm="batchnorm"), ["norm", "batchnorm"]),
    (dict(mlp="relu"), ["mlp", "relu"]),
    (dict(pos="rope", n_embd=6, n_head=2), ["rope", "3"]),
    (dict(dropout=1.0), ["dropout", "1.0"]),
    (dict(dropout=-0.1), ["dropout", "-0.1"]),
    (dict(dropout=float("nan")), ["dropout", "nan"]),
])
def test_config_validation_names_the_value(kw, words):
    base = dict(vocab_size=7, block_size=4, n_layer=1, n_head=2, n_embd=8)
    with pytest.raises(ValueError) as e:
        GPTConfig(**{**base, **kw})
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_config_defaults_and_dict_round_trip():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (50304, 1024, 12, 12, 768)
    assert c.n_kv_head == 12 and c.pos == "learned" and c.tie_weights and c.bias
    small = GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=4, n_kv_head=2, n_embd=8, pos="rope")
    assert GPTConfig.from_dict(small.to_dict()) == small
    with pytest.raises(ValueError, match="bogus"):
        GPTConfig.from_dict({**small.to_dict(), "bogus": 1})
    GPTConfig(vocab_size=np.int64(7), block_size=4, n_layer=1, n_head=2, n_embd=8)  # NumPy ints are fine


def test_repr_shows_the_architecture():
    r = repr(tiny(**VARIANTS["llama_like"]))
    assert r.startswith("GPT(\n  (transformer): ModuleDict(\n")
    assert "(wte): Embedding(7, 8)" in r and "(0): Block(" in r and "(1): Block(" in r
    assert "\n        (attn): CausalSelfAttention(\n          n_head=2, n_kv_head=1, rope=True\n" \
           "          (c_attn): Linear(in_features=8, out_features=16, bias=False)\n" in r
    assert "\n        (mlp): MLP(\n          kind='swiglu'\n          (c_fc): Linear(" in r
    assert r.count("(") == r.count(")")
    assert "RMSNorm((8,), eps=1e-06)" in r and "(lm_head): Linear(in_features=8, out_features=7, bias=False)" in r
