"""nn layers: the Module API (parameters, state_dict, modes, dtype), basic layers against NumPy
formulas, containers, causal grouped-query attention, RoPE and sinusoidal positions, MLP and Block."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_lm as tg
from tinygrad_lm import Tensor
from tinygrad_lm.nn import (MLP, Block, CausalSelfAttention, Dropout, Embedding, KVCache, LayerNorm, Linear,
                            Module, ModuleDict, ModuleList, Parameter, RMSNorm, RoPE, Sequential, sinusoidal_table,
                            swiglu_hidden)


class Net(Module):
    """Embedding -> Sequential of Linears -> LayerNorm, a free Parameter, and a head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.emb = Embedding(5, 4)
        self.body = Sequential(Linear(4, 4), Linear(4, 3))
        self.norm = LayerNorm(3)
        self.scale = Parameter(np.ones(3, np.float32))
        self.head = Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight                    # tied: (5, 4) both
        self.drop = Dropout(0.1)
        self.buffer = Tensor(np.zeros(3, np.float32))         # a plain Tensor: not a parameter
        self.note = "not a module"

    def forward(self, ids):
        h = self.emb(ids)                                     # (..., 4)
        return self.norm(self.body(h)) * self.scale, self.head(self.drop(h))


PARAM_NAMES = ["emb.weight", "body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias", "norm.weight",
               "norm.bias", "scale"]
STATE_NAMES = PARAM_NAMES + ["head.weight"]


def make_net(seed=0):
    tg.manual_seed(seed)
    net = Net()
    rng = np.random.default_rng(seed + 100)
    for p in net.parameters():  # non-trivial norm weights and biases too
        p.data[...] = rng.standard_normal(p.shape)
    return net


# ---- Module API -----------------------------------------------------------------------------------

def test_parameters_in_assignment_order_with_ties_once():
    net = make_net()
    names = [n for n, _ in net.named_parameters()]
    assert names == PARAM_NAMES
    params = net.parameters()
    assert len(params) == len(PARAM_NAMES) and len({id(p) for p in params}) == len(params)
    assert all(isinstance(p, Parameter) and p.requires_grad for p in params)
    assert net.head.weight is net.emb.weight and params[0] is net.emb.weight
    assert net.num_parameters() == 5 * 4 + (16 + 4) + (12 + 3) + 3 + 3 + 3


def test_state_dict_has_tied_keys_under_both_names_as_copies():
    net = make_net()
    sd = net.state_dict()
    assert list(sd) == STATE_NAMES
    for name, p in net._named_tensors():
        assert isinstance(sd[name], np.ndarray) and sd[name].shape == p.shape and sd[name].dtype == p.dtype
        np.testing.assert_array_equal(sd[name], p.data)
    np.testing.assert_array_equal(sd["head.weight"], sd["emb.weight"])
    assert sd["head.weight"] is not sd["emb.weight"]
    before = net.emb.weight.data.copy()
    sd["emb.weight"][...] = 123.0  # a copy: the model does not change
    np.testing.assert_array_equal(net.emb.weight.data, before)


def test_load_state_dict_round_trip_keeps_ties_casts_and_copies():
    src, dst = make_net(0), make_net(1)
    sd = {k: v.astype(np.float64) for k, v in src.state_dict().items()}
    missing, unexpected = dst.load_state_dict(sd)
    assert missing == [] and unexpected == []
    assert dst.head.weight is dst.emb.weight
    for (n, a), (_, b) in zip(src.named_parameters(), dst.named_parameters()):
        assert b.dtype == np.float32, n
        np.testing.assert_array_equal(a.data, b.data)
    sd["body.0.weight"][...] = 7.0  # loading copied the arrays
    np.testing.assert_array_equal(dst.body[0].weight.data, src.body[0].weight.data)
    ids = np.array([[0, 3, 4]])
    for x, y in zip(src.eval()(ids), dst.eval()(ids)):
        np.testing.assert_array_equal(x.data, y.data)


def test_load_state_dict_accepts_tensors_and_lists():
    src, dst = make_net(0), make_net(1)
    sd = {k: Tensor(v) for k, v in src.state_dict().items()}
    sd["scale"] = [1.0, 2.0, 3.0]
    dst.load_state_dict(sd)
    np.testing.assert_array_equal(dst.emb.weight.data, src.emb.weight.data)
    np.testing.assert_array_equal(dst.scale.data, np.array([1, 2, 3], np.float32))
    assert dst.scale.dtype == np.float32


def snapshot(net):
    return [(n, p, p.data, p.data.copy()) for n, p in net._named_tensors()]


def assert_untouched(net, snap):
    now = list(net._named_tensors())
    assert [n for n, _ in now] == [n for n, *_ in snap]
    for (n, p), (n0, p0, data0, copy0) in zip(now, snap):
        assert p is p0 and p.data is data0, n
        np.testing.assert_array_equal(p.data, copy0, err_msg=n)


def test_load_state_dict_strict_lists_missing_and_unexpected_keys_and_changes_nothing():
    net = make_net(1)
    good = make_net(0).state_dict()
    snap = snapshot(net)

    sd = dict(good)
    del sd["norm.bias"], sd["head.weight"]
    with pytest.raises(KeyError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "missing" in msg and "norm.bias" in msg and "head.weight" in msg and "unexpected" not in msg
    assert_untouched(net, snap)

    sd = dict(good, **{"extra.weight": np.zeros(2), "body.2.bias": np.zeros(3)})
    with pytest.raises(KeyError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "unexpected" in msg and "extra.weight" in msg and "body.2.bias" in msg and "missing" not in msg
    assert_untouched(net, snap)

    del sd["scale"]
    with pytest.raises(KeyError) as e:
        net.load_state_dict(sd)
    assert all(s in str(e.value) for s in ("missing", "scale", "unexpected", "extra.weight"))
    assert_untouched(net, snap)


@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_shape_mismatch_names_key_and_both_shapes_and_changes_nothing(strict):
    net = make_net(1)
    sd = make_net(0).state_dict()  # every key before the bad one would load
    sd["norm.weight"] = np.zeros((4,), np.float32)
    snap = snapshot(net)
    with pytest.raises(ValueError) as e:
        net.load_state_dict(sd, strict=strict)
    msg = str(e.value)
    assert "norm.weight" in msg and "(4,)" in msg and "(3,)" in msg
    assert_untouched(net, snap)

    sd = make_net(0).state_dict()
    sd["head.weight"] = np.zeros((4, 5), np.float32)  # the tied name, transposed
    with pytest.raises(ValueError) as e:
        net.load_state_dict(sd, strict=strict)
    assert "head.weight" in str(e.value) and "(4, 5)" in str(e.value) and "(5, 4)" in str(e.value)
    assert_untouched(net, snap)


def test_load_state_dict_unconvertible_value_changes_nothing():
    net = make_net(1)
    sd = make_net(0).state_dict()
    sd["norm.bias"] = np.array(["a", "b", "c"])  # right shape, cannot become float32
    snap = snapshot(net)
    with pytest.raises(ValueError):
        net.load_state_dict(sd)
    assert_untouched(net, snap)


def test_load_state_dict_non_strict_returns_missing_and_unexpected():
    net, src = make_net(1), make_net(0)
    before_norm_bias = net.norm.bias.data.copy()
    sd = src.state_dict()
    del sd["norm.bias"]
    sd["ghost"] = np.ones(2)
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert missing == ["norm.bias"] and unexpected == ["ghost"]
    np.testing.assert_array_equal(net.norm.bias.data, before_norm_bias)
    np.testing.assert_array_equal(net.body[1].weight.data, src.body[1].weight.data)
    np.testing.assert_array_equal(net.emb.weight.data, src.emb.weight.data)


def test_train_eval_propagate_to_every_child():
    net = make_net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    assert not net.body[1].training and not net.drop.training
    assert net.train() is net and all(m.training for m in net.modules())
    net.train(False)
    assert not any(m.training for m in net.modules())
    # eval mode switches dropout off: the head output is deterministic again
    ids = np.array([[1, 2, 3, 4]])
    np.testing.assert_array_equal(net(ids)[1].data, net(ids)[1].data)


def test_named_modules_and_children():
    net = make_net()
    assert [n for n, _ in net.named_children()] == ["emb", "body", "norm", "head", "drop"]
    names = [n for n, _ in net.named_modules()]
    assert names == ["", "emb", "body", "body.0", "body.1", "norm", "head", "drop"]
    assert net.modules()[0] is net and net.children()[1] is net.body


def test_zero_grad_clears_every_gradient():
    net = make_net()
    a, b = net(np.array([[0, 1, 2]]))
    (a.sum() + (b * b).sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net.emb.weight.grad.shape == (5, 4)
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_requires_grad_toggle():
    net = make_net()
    net.requires_grad_(False)
    assert not any(p.requires_grad for p in net.parameters())
    net.requires_grad_()
    assert all(p.requires_grad for p in net.parameters())


def test_to_float64_and_back_keeps_ties_and_casts_grads():
    net = make_net()
    a, _ = net(np.array([[0, 1]]))
    a.sum().backward()
    values = {n: p.data.copy() for n, p in net.named_parameters()}
    params = net.parameters()
    assert net.to(dtype=np.float64) is net
    assert net.parameters() == params                         # same Parameter objects, cast in place
    assert net.head.weight is net.emb.weight
    for n, p in net.named_parameters():
        assert p.dtype == np.float64 and (p.grad is None or p.grad.dtype == np.float64), n
        np.testing.assert_array_equal(p.data, values[n])
    out, logits = net(np.array([[0, 1]]))
    assert out.dtype == np.float64 and logits.dtype == np.float64
    net.float()
    assert all(p.dtype == np.float32 for p in net.parameters()) and net.head.weight is net.emb.weight
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters())


def test_repr_is_readable():
    r = repr(make_net())
    lines = r.splitlines()
    assert lines[0] == "Net(" and lines[-1] == ")"
    assert "  (emb): Embedding(5, 4)" in lines
    assert "  (body): Sequential(" in lines
    assert "    (0): Linear(in_features=4, out_features=4, bias=True)" in lines
    assert "    (1): Linear(in_features=4, out_features=3, bias=True)" in lines
    assert "  (norm): LayerNorm((3,), eps=1e-05, bias=True)" in lines
    assert "  (head): Linear(in_features=4, out_features=5, bias=False)" in lines
    assert "  (drop): Dropout(p=0.1)" in lines
    assert "scale" not in r and "buffer" not in r
    assert repr(RMSNorm(6)) == "RMSNorm((6,), eps=1e-06)"
    # a module with both settings and children: settings on their own line, as in PyTorch
    assert repr(MLP(4, "gelu", bias=False)).splitlines() == [
        "MLP(", "  kind='gelu'", "  (c_fc): Linear(in_features=4, out_features=16, bias=False)",
        "  (c_proj): Linear(in_features=16, out_features=4, bias=False)", "  (dropout): Dropout(p=0.0)", ")"]
    assert repr(Parameter(np.zeros(2, np.float32))).startswith("Parameter containing:\nTensor(")


# ---- layers ------------------------------------------------------------------------------------

def test_linear_layout_forward_and_init():
    tg.manual_seed(0)
    lin = Linear(5, 3)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    assert lin.weight.dtype == np.float32 and lin.bias.dtype == np.float32
    assert np.abs(lin.weight.data).max() <= 1 / math.sqrt(5) and np.abs(lin.bias.data).max() <= 1 / math.sqrt(5)
    assert lin.weight.data.std() > 0.1
    x = np.random.default_rng(0).standard_normal((2, 4, 5)).astype(np.float32)
    y = lin(Tensor(x))
    assert y.shape == (2, 4, 3) and y.dtype == np.float32
    np.testing.assert_allclose(y.data, x @ lin.weight.data.T + lin.bias.data, rtol=1e-5, atol=1e-6)
    nob = Linear(5, 3, bias=False)
    assert nob.bias is None and [n for n, _ in nob.named_parameters()] == ["weight"]
    np.testing.assert_allclose(nob(Tensor(x)).data, x @ nob.weight.data.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="0"):
        Linear(0, 3)
    with pytest.raises(ValueError, match="-2"):
        Linear(3, -2)
    with pytest.raises(ValueError):
        lin(Tensor(np.zeros((2, 4), np.float32)))  # wrong in_features


def test_embedding_lookup():
    tg.manual_seed(0)
    emb = Embedding(6, 3)
    assert emb.weight.shape == (6, 3) and emb.weight.dtype == np.float32
    assert 0.3 < emb.weight.data.std() < 3  # N(0, 1) init
    ids = np.array([[0, 5, 2], [2, 2, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out.data, emb.weight.data[ids])
    out.sum().backward()  # repeated ids accumulate
    np.testing.assert_array_equal(emb.weight.grad[:, 0], np.bincount(ids.ravel(), minlength=6))
    with pytest.raises(IndexError, match="6"):
        emb(np.array([6]))
    with pytest.raises(IndexError, match="-1"):
        emb(np.array([-1]))
    with pytest.raises(TypeError):
        emb(np.array([1.0]))


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm(bias):
    ln = LayerNorm(6, bias=bias)
    assert [n for n, _ in ln.named_parameters()] == (["weight", "bias"] if bias else ["weight"])
    assert list(ln.state_dict()) == (["weight", "bias"] if bias else ["weight"])
    rng = np.random.default_rng(0)
    ln.weight.data[...] = rng.standard_normal(6)
    if bias:
        ln.bias.data[...] = rng.standard_normal(6)
    x = rng.standard_normal((3, 2, 6)).astype(np.float32) * 3 + 1
    y = ln(Tensor(x))
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * ln.weight.data
    if bias:
        ref = ref + ln.bias.data
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, ref, rtol=1e-4, atol=1e-5)


def test_rms_norm():
    rms = RMSNorm(5)
    assert [n for n, _ in rms.named_parameters()] == ["weight"]
    np.testing.assert_array_equal(rms.weight.data, np.ones(5, np.float32))
    rng = np.random.default_rng(1)
    rms.weight.data[...] = rng.standard_normal(5)
    x = rng.standard_normal((4, 5)).astype(np.float32) + 2
    ref = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * rms.weight.data
    y = rms(Tensor(x))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, ref, rtol=1e-4, atol=1e-5)


def test_dropout_train_vs_eval():
    tg.manual_seed(0)
    drop = Dropout(0.25)
    x = Tensor(np.ones((100, 100), np.float32), requires_grad=True)
    y = drop(x)
    assert y.dtype == np.float32
    zeros = (y.data == 0).mean()
    assert 0.2 < zeros < 0.3
    np.testing.assert_allclose(y.data[y.data != 0], 1 / 0.75, rtol=1e-6)  # survivors rescaled
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)                        # same mask in backward
    assert (drop(x).data != y.data).any()                                # a fresh mask each call
    drop.eval()
    np.testing.assert_array_equal(drop(x).data, x.data)
    assert drop(x) is x
    drop.train()
    assert (drop(x).data == 0).any()
    assert Dropout(0.0)(x) is x
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=str(bad)):
            Dropout(bad)


# ---- containers -------------------------------------------------------------------------------

def test_module_list_indexing_len_iter_slicing():
    mods = [Linear(2, 2) for _ in range(4)]
    ml = ModuleList(mods)
    assert len(ml) == 4 and list(ml) == mods
    assert ml[0] is mods[0] and ml[3] is mods[3] and ml[-1] is mods[3] and ml[-4] is mods[0]
    for bad in (4, -5, 10):
        with pytest.raises(IndexError, match=str(bad)):
            ml[bad]
    sub = ml[1:3]
    assert isinstance(sub, ModuleList) and list(sub) == mods[1:3]
    assert list(ml[::-1]) == mods[::-1] and len(ml[5:]) == 0
    assert ml.append(Linear(2, 2)) is ml and len(ml) == 5
    names = [n for n, _ in ml.named_parameters()]
    assert names == [f"{i}.{w}" for i in range(5) for w in ("weight", "bias")]
    assert len(ModuleList()) == 0 and list(ModuleList()) == []


def test_module_dict():
    a, b = Linear(2, 3), LayerNorm(3)
    md = ModuleDict({"proj": a, "ln": b})
    assert md["proj"] is a and md.ln is b and md.keys() == ["proj", "ln"]
    assert list(md.state_dict()) == ["proj.weight", "proj.bias", "ln.weight", "ln.bias"]


def test_sequential():
    tg.manual_seed(0)
    l1, l2, l3 = Linear(3, 5), Linear(5, 4), Linear(4, 2)
    seq = Sequential(l1, l2, l3)
    assert len(seq) == 3 and seq[1] is l2 and list(seq) == [l1, l2, l3]
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    np.testing.assert_array_equal(seq(x).data, l3(l2(l1(x))).data)
    head = seq[:2]
    assert isinstance(head, Sequential) and list(head) == [l1, l2]
    np.testing.assert_array_equal(head(x).data, l2(l1(x)).data)
    assert [n for n, _ in seq.named_parameters()][:3] == ["0.weight", "0.bias", "1.weight"]
    assert Sequential()(x) is x


# ---- attention ----------------------------------------------------------------------------------

def attention_reference(x, attn, rope=False):
    """Plain NumPy causal attention with grouped kv heads (kv head j serves query heads j*r .. j*r+r-1)."""
    B, T, C = x.shape
    nh, nkv = attn.n_head, attn.n_kv_head
    hs = C // nh
    W, b = attn.c_attn.weight.data, attn.c_attn.bias.data
    qkv = x @ W.T + b
    q = qkv[..., :C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)
    k = qkv[..., C:C + nkv * hs].reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)
    v = qkv[..., C + nkv * hs:].reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)
    if rope:
        q, k = rope_reference(q, 0), rope_reference(k, 0)
    k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
    att = q @ k.swapaxes(-1, -2) / math.sqrt(hs)
    att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
    return y @ attn.c_proj.weight.data.T + attn.c_proj.bias.data


def rope_reference(x, start, base=10000.0):
    """Rotate each pair (x[i], x[i + hs/2]) by angle pos * base^(-2i/hs)."""
    T, hs = x.shape[-2], x.shape[-1]
    h = hs // 2
    pos = np.arange(start, start + T)[:, None]
    ang = pos * base ** (-np.arange(h) * 2 / hs)                          # (T, h)
    c, s = np.cos(ang), np.sin(ang)
    x1, x2 = x[..., :h], x[..., h:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


def random_attention(n_embd, n_head, n_kv_head, rope=None, seed=0):
    tg.manual_seed(seed)
    attn = CausalSelfAttention(n_embd, n_head, n_kv_head, rope=rope).double()
    rng = np.random.default_rng(seed)
    for p in attn.parameters():
        p.data[...] = rng.normal(0, 0.5, p.shape)
    return attn


@pytest.mark.parametrize("n_head,n_kv_head,use_rope", [(4, 4, False), (4, 2, False), (4, 1, False),
                                                       (4, 2, True), (2, 2, True)])
def test_attention_matches_numpy_reference(n_head, n_kv_head, use_rope):
    C, T = 16, 5
    rope = RoPE(C // n_head, 8) if use_rope else None
    attn = random_attention(C, n_head, n_kv_head, rope)
    hs = C // n_head
    assert attn.c_attn.weight.shape == (C + 2 * n_kv_head * hs, C) and attn.c_proj.weight.shape == (C, C)
    x = np.random.default_rng(1).standard_normal((2, T, C))
    y = attn(Tensor(x))
    assert y.shape == (2, T, C) and y.dtype == np.float64
    np.testing.assert_allclose(y.data, attention_reference(x, attn, use_rope), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("use_rope", [False, True])
def test_gqa_equals_mha_with_repeated_kv_heads(use_rope):
    C, nh, nkv = 12, 6, 2
    hs, rep = C // nh, nh // nkv
    rope = RoPE(hs, 8) if use_rope else None
    gqa = random_attention(C, nh, nkv, rope, seed=3)
    mha = random_attention(C, nh, nh, rope, seed=4)
    Wg, bg = gqa.c_attn.weight.data, gqa.c_attn.bias.data
    rows_k = [C + (h // rep) * hs + i for h in range(nh) for i in range(hs)]        # kv head of query head h
    rows_v = [C + nkv * hs + (h // rep) * hs + i for h in range(nh) for i in range(hs)]
    rows = list(range(C)) + rows_k + rows_v
    mha.c_attn.weight.data[...] = Wg[rows]
    mha.c_attn.bias.data[...] = bg[rows]
    mha.c_proj.weight.data[...] = gqa.c_proj.weight.data
    mha.c_proj.bias.data[...] = gqa.c_proj.bias.data
    x = Tensor(np.random.default_rng(5).standard_normal((2, 6, C)))
    np.testing.assert_allclose(gqa(x).data, mha(x).data, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n_kv_head,use_rope", [(4, False), (2, True), (1, False)])
def test_attention_is_causal(n_kv_head, use_rope):
    C, T = 8, 6
    attn = random_attention(C, 4, n_kv_head, RoPE(2, 8) if use_rope else None)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, T, C))
    base = attn(Tensor(x)).data
    for t in range(T):
        x2 = x.copy()
        x2[:, t:] = rng.standard_normal((2, T - t, C))   # change position t and everything after it
        out = attn(Tensor(x2)).data
        np.testing.assert_array_equal(out[:, :t], base[:, :t])
        assert not np.allclose(out[:, t], base[:, t])


def test_attention_gradient_does_not_flow_from_the_past_to_the_future():
    attn = random_attention(8, 2, 1)
    x = Tensor(np.random.default_rng(0).standard_normal((1, 5, 8)), requires_grad=True)
    attn(x)[:, 2].sum().backward()  # output at position 2 depends only on inputs 0..2
    assert np.abs(x.grad[:, 3:]).max() == 0
    assert np.abs(x.grad[:, :3]).min(axis=-1).max() > 0


def test_attention_shape_errors():
    with pytest.raises(ValueError, match=r"n_embd \(10\).*n_head \(3\)"):
        CausalSelfAttention(10, 3)
    with pytest.raises(ValueError, match=r"n_head \(4\).*n_kv_head \(3\)"):
        CausalSelfAttention(8, 4, 3)
    with pytest.raises(ValueError, match=r"n_head \(2\).*n_kv_head \(4\)"):
        CausalSelfAttention(8, 2, 4)
    attn = CausalSelfAttention(8, 2, bias=False)
    assert attn.c_attn.bias is None and attn.c_proj.bias is None
    assert CausalSelfAttention(8, 4, None).n_kv_head == 4
    with pytest.raises(ValueError, match=r"n_kv_head \(0\) must be >= 1"):   # not silently n_head
        CausalSelfAttention(8, 4, 0)
    with pytest.raises(ValueError, match=r"n_head \(0\)"):
        CausalSelfAttention(8, 0)


def test_attention_with_kv_cache_matches_full_pass():
    C, T = 8, 6
    attn = random_attention(C, 4, 2, RoPE(2, 8))
    x = np.random.default_rng(0).standard_normal((2, T, C))
    full = attn(Tensor(x)).data
    cache = KVCache(1, 2, 2, 8, 2, np.float64, np)
    parts = []
    for s, e in [(0, 3), (3, 4), (4, 6)]:
        parts.append(attn(Tensor(x[:, s:e]), start=s, cache=cache).data)
        cache.advance(e - s)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-10, atol=1e-12)


def test_kv_cache_update_capacity_and_reset():
    cache = KVCache(2, 1, 1, 4, 2, np.float32, np)
    k = np.ones((1, 1, 3, 2), np.float32)
    ka, va = cache.update(1, k, 2 * k)
    assert ka.shape == (1, 1, 3, 2) and (va == 2).all() and cache.pos == 0
    cache.advance(3)
    ka, _ = cache.update(1, 3 * k[:, :, :1], k[:, :, :1])
    assert ka.shape == (1, 1, 4, 2) and (ka[:, :, 3] == 3).all() and (ka[:, :, :3] == 1).all()
    cache.advance(1)
    with pytest.raises(RuntimeError, match="5.*4"):
        cache.update(0, k[:, :, :1], k[:, :, :1])
    cache.reset()
    assert cache.pos == 0


# ---- positional encodings ---------------------------------------------------------------------

@given(half=st.integers(1, 8), T=st.integers(1, 4), start=st.integers(0, 40), data=st.data())
def test_rope_preserves_norms_and_matches_pairwise_rotation(half, T, start, data):
    hs = 2 * half
    rope = RoPE(hs, 48)
    x = data.draw(hnp.arrays(np.float64, (2, T, hs), elements=st.floats(-3, 3, allow_subnormal=False)))
    y = rope(Tensor(x), start)
    assert y.shape == x.shape and y.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(y.data, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y.data, rope_reference(x, start), rtol=1e-12, atol=1e-12)


@given(half=st.integers(1, 8), m=st.integers(0, 30), n=st.integers(0, 30), shift=st.integers(0, 30), data=st.data())
def test_rope_dot_product_depends_only_on_relative_position(half, m, n, shift, data):
    hs = 2 * half
    rope = RoPE(hs, 64)
    vec = hnp.arrays(np.float64, (1, hs), elements=st.floats(-2, 2, allow_subnormal=False))
    q, k = Tensor(data.draw(vec)), Tensor(data.draw(vec))

    def score(i, j):
        return float((rope(q, i).data * rope(k, j).data).sum())

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), rel=1e-9, abs=1e-9)
    assert score(m, m) == pytest.approx(float((q.data * k.data).sum()), rel=1e-9, abs=1e-9)


def test_rope_position_zero_is_identity_and_bounds():
    rope = RoPE(4, 3)
    x = np.random.default_rng(0).standard_normal((1, 2, 1, 4)).astype(np.float32)
    y = rope(Tensor(x), 0)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.data, x)
    rope(Tensor(np.zeros((1, 3, 4), np.float32)), 0)
    with pytest.raises(ValueError, match="4.*3"):
        rope(Tensor(np.zeros((1, 2, 4), np.float32)), 2)
    with pytest.raises(ValueError, match="5"):
        RoPE(5, 8)


def test_rope_gradient():
    rope = RoPE(4, 8)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 4)), requires_grad=True)
    assert tg.gradcheck(lambda t: rope(t, 2), [x])


@pytest.mark.parametrize("dim", [1, 2, 5, 8])
def test_sinusoidal_table_values(dim):
    n = 7
    table = sinusoidal_table(n, dim)
    assert table.shape == (n, dim)
    for p in range(n):
        for i in range(dim):
            angle = p / 10000 ** ((i - i % 2) / dim)
            expect = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert table[p, i] == pytest.approx(expect, abs=1e-12)
    np.testing.assert_allclose(table[0], [0.0 if i % 2 == 0 else 1.0 for i in range(dim)])
    assert np.abs(table).max() <= 1


def test_sinusoidal_table_known_numbers():
    t = sinusoidal_table(3, 4)
    np.testing.assert_allclose(t[1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)], atol=1e-12)
    np.testing.assert_allclose(t[2], [math.sin(2), math.cos(2), math.sin(0.02), math.cos(0.02)], atol=1e-12)


# ---- MLP and Block ------------------------------------------------------------------------------

def _erf(x):
    return np.vectorize(math.erf)(x)


@pytest.mark.parametrize("kind", ["gelu", "gelu_tanh", "swiglu"])
def test_mlp_kinds_match_numpy(kind):
    tg.manual_seed(0)
    C = 8
    mlp = MLP(C, kind).double()
    hidden = swiglu_hidden(C) if kind == "swiglu" else 4 * C
    assert mlp.c_fc.weight.shape == ((2 * hidden if kind == "swiglu" else hidden), C)
    assert mlp.c_proj.weight.shape == (C, hidden)
    x = np.random.default_rng(0).standard_normal((2, 3, C))
    h = x @ mlp.c_fc.weight.data.T + mlp.c_fc.bias.data
    if kind == "gelu":
        a = 0.5 * h * (1 + _erf(h / math.sqrt(2)))
    elif kind == "gelu_tanh":
        a = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    else:
        gate, up = h[..., :hidden], h[..., hidden:]
        a = gate / (1 + np.exp(-gate)) * up
    ref = a @ mlp.c_proj.weight.data.T + mlp.c_proj.bias.data
    np.testing.assert_allclose(mlp(Tensor(x)).data, ref, rtol=1e-9, atol=1e-12)


def test_swiglu_hidden_and_bad_kind():
    assert swiglu_hidden(8) == 24 and swiglu_hidden(768) == 2048 and swiglu_hidden(6) == 16
    assert all(swiglu_hidden(n) % 8 == 0 and swiglu_hidden(n) >= 8 * n / 3 - 1 for n in range(1, 100))
    with pytest.raises(ValueError, match="relu"):
        MLP(8, "relu")


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_block_is_pre_norm_residual(norm):
    tg.manual_seed(0)
    blk = Block(8, 2, 1, norm=norm, mlp="swiglu").double()
    assert [n for n, _ in blk.named_children()] == ["ln_1", "attn", "ln_2", "mlp"]
    assert isinstance(blk.ln_1, LayerNorm if norm == "layernorm" else RMSNorm)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4, 8)))
    h = x + blk.attn(blk.ln_1(x))
    np.testing.assert_allclose(blk(x).data, (h + blk.mlp(blk.ln_2(h))).data, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="batchnorm"):
        Block(8, 2, norm="batchnorm")
