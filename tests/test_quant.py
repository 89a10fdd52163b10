"""Quantized frozen base (issue 12): int8 and NF4 weights, the quant_linear op, QuantizedLinear.

- round trips: every value within its format's bound (int8: half a step of its row's scale; NF4:
  the block's absmax times half the widest gap between levels), rounded to the nearest level,
  in_features not a multiple of the block, size-1 axes, rows and blocks of zeros;
- NF4_LEVELS is bitsandbytes' table;
- the Numba kernels equal the reference (forward and backward, 1/3/17/200 rows, odd sizes,
  padding bytes that must never be read, chunked dequantization, parallel and serial builds);
- gradcheck of QuantLinear in float64 in both kernel modes (x, and a bias that asks for it);
- QuantizedLinear in a tiny GPT via quantize_model: logits close to the float model's (int8
  closer than NF4), lm_head float, no quantized weight among the parameters, gradients reach the
  embeddings, float64 and kernel modes agree;
- bad inputs get errors that name what is wrong."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_lm as tg
from strategies import T, arrays
from tinygrad_lm import backend
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.kernels.cpu import _jit
from tinygrad_lm.kernels.cpu import ops as cpu_ops
from tinygrad_lm.kernels.cpu import quant as kq
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.nn import Linear, Sequential
from tinygrad_lm.ops.quant import QuantLinear
from tinygrad_lm.peft.quant import (NF4_LEVELS, QUANT_KINDS, QuantizedLinear, QuantizedWeight, dequantize,
                                    quant_linear, quantize, quantize_model, quantized_bytes)

GRADCHECKED = {"QuantLinear"}

# bitsandbytes, functional.get_4bit_type("nf4") (the QLoRA paper's NormalFloat4)
PUBLISHED_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                 -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0]
HALF_GAP = float(np.diff(NF4_LEVELS.astype(np.float64)).max() / 2)     # 0.1519 (between -1 and -0.696)
# float32 scales cannot resolve weights below ~1e-38 (they quantize to 0 or to a subnormal scale)
TINY = 1e-36
EPS = {np.float16: 2.0 ** -10, np.float32: 2.0 ** -23, np.float64: 2.0 ** -52}


def test_nf4_levels_are_the_published_table():
    assert NF4_LEVELS.dtype == np.float32 and NF4_LEVELS.shape == (16,)
    assert NF4_LEVELS.astype(np.float64).tolist() == PUBLISHED_NF4      # exact: the values are float32s
    assert (np.diff(NF4_LEVELS) > 0).all() and NF4_LEVELS[7] == 0
    assert QUANT_KINDS == ("int8", "nf4")
    assert abs(HALF_GAP - 0.15190359950065613) < 1e-12


# ---- round trips ----------------------------------------------------------------------------------

@st.composite
def weights(draw, max_out=6, max_in=150):
    """(out, in) weights of a drawn dtype: odd sizes, size-1 axes, mixed magnitudes, zero rows/runs."""
    out_f, in_f = draw(st.integers(1, max_out)), draw(st.integers(1, max_in))
    w = draw(arrays((out_f, in_f), -1.0, 1.0)) * draw(st.sampled_from([1.0, 1e-3, 40.0]))
    if draw(st.booleans()):
        w[draw(st.integers(0, out_f - 1))] = 0                       # a row of zeros
    if draw(st.booleans()):
        w[:, : draw(st.integers(0, in_f))] = 0                      # whole blocks of zeros, maybe
    return w.astype(draw(st.sampled_from([np.float16, np.float32, np.float64])))


@given(w=weights())
def test_int8_round_trip_within_half_a_step(w):
    qw = quantize(w, "int8")
    assert qw.kind == "int8" and qw.shape == w.shape
    assert qw.data.dtype == np.int8 and qw.data.shape == w.shape
    assert qw.scales.dtype == np.float32 and qw.scales.shape == (w.shape[0],)
    w64 = w.astype(np.float64)
    absmax = np.abs(w64).max(axis=1)
    expect = (absmax / 127).astype(np.float32)
    np.testing.assert_array_equal(qw.scales, np.where(expect == 0, 1, expect))   # absmax / 127; 1 for zeros
    assert np.abs(qw.data.astype(int)).max() <= 127
    s = qw.scales.astype(np.float64)[:, None]
    assert (np.abs(w64 / s - qw.data) <= 0.5 + 1e-9).all()        # round to nearest
    for dtype in (np.float32, np.float64):
        deq = dequantize(qw, dtype)
        assert deq.dtype == dtype and deq.shape == w.shape
        err = np.abs(w64 - deq)
        assert (err <= s / 2 * (1 + 1e-6) + EPS[dtype] * np.abs(w64) + TINY).all(), err.max()
    assert (dequantize(qw)[absmax == 0] == 0).all()


@given(w=weights(), block_size=st.sampled_from([2, 6, 64, 128]))
def test_nf4_round_trip_within_half_the_widest_gap(w, block_size):
    qw = quantize(w, "nf4", block_size)
    out_f, in_f = w.shape
    nb = -(-in_f // block_size)
    assert qw.data.dtype == np.uint8 and qw.data.shape == (out_f, nb * block_size // 2)
    assert qw.scales.dtype == np.float32 and qw.scales.shape == (out_f, nb)
    w64 = w.astype(np.float64)
    padded = np.zeros((out_f, nb * block_size))
    padded[:, :in_f] = w64
    absmax = np.abs(padded.reshape(out_f, nb, block_size)).max(axis=2)
    expect = absmax.astype(np.float32)
    np.testing.assert_array_equal(qw.scales, np.where(expect == 0, 1, expect))
    deq = dequantize(qw, np.float64)
    assert deq.shape == w.shape
    bound = np.repeat(absmax, block_size, axis=1)[:, :in_f] * HALF_GAP
    assert (np.abs(w64 - deq) <= bound * (1 + 1e-6) + TINY).all()
    # nearest level: no other level is closer to w / scale than the one chosen
    scale = np.repeat(qw.scales.astype(np.float64), block_size, axis=1)[:, :in_f]
    v = w64 / scale
    chosen = np.abs(v - deq / scale)
    best = np.abs(v[..., None] - NF4_LEVELS.astype(np.float64)).min(axis=-1)
    normal = scale >= np.finfo(np.float32).tiny
    assert (chosen <= best + 1e-12)[normal].all()
    assert (deq[np.repeat(absmax == 0, block_size, axis=1)[:, :in_f]] == 0).all()   # zero blocks stay zero
    np.testing.assert_array_equal(dequantize(qw, np.float32), deq.astype(np.float32))


def test_nf4_packs_the_first_of_a_pair_in_the_high_nibble():
    w = np.array([[-1.0, 1.0, 0.0, 0.5626170039176941]])
    qw = quantize(w, "nf4", block_size=4)
    assert qw.data.tolist() == [[0x0F, 0x7D]]
    assert quantize(w, "int8").data.tolist() == [[-127, 127, 0, 71]]


def test_values_at_the_block_maximum_are_exact():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 70)).astype(np.float32)
    for kind in QUANT_KINDS:
        deq = dequantize(quantize(w, kind))
        rows = np.arange(3)
        at = np.abs(w[:, :64] if kind == "nf4" else w).argmax(axis=1)   # nf4: +-1 * absmax of block 0;
        np.testing.assert_allclose(deq[rows, at], w[rows, at], rtol=1e-6)    # int8: +-127 * (absmax / 127)


def padding_scrambled(qw):
    """A copy of an NF4 weight whose padding nibbles (past in_features) all point at level 1.0."""
    data = qw.data.copy()
    idx = np.empty((data.shape[0], 2 * data.shape[1]), np.uint8)
    idx[:, 0::2], idx[:, 1::2] = data >> 4, data & 15
    idx[:, qw.shape[1]:] = 15
    return QuantizedWeight(qw.kind, qw.shape, (idx[:, 0::2] << 4) | idx[:, 1::2], qw.scales, qw.block_size)


def test_padding_is_never_read_back():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 37))
    qw = quantize(w, "nf4", block_size=16)
    bad = padding_scrambled(qw)
    assert not np.array_equal(bad.data, qw.data)
    np.testing.assert_array_equal(dequantize(bad), dequantize(qw))
    for rows in (1, 17):
        x, g = rng.standard_normal((rows, 37)), rng.standard_normal((rows, 5))
        for impl in (backend.reference("quant_linear"), cpu_ops.FAST["quant_linear"]):
            np.testing.assert_array_equal(impl.forward(x, bad, None), impl.forward(x, qw, None))
            np.testing.assert_array_equal(impl.backward(g, bad), impl.backward(g, qw))


# ---- the fast kernels equal the reference ------------------------------------------------------

def close(actual, expected, dtype, scale, what):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype == dtype, what
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 3, 17, 200])
@given(data=st.data())
def test_quant_linear_matches_reference(dtype, rows, data):
    draw = data.draw
    kind = draw(st.sampled_from(QUANT_KINDS))
    out_f, in_f = draw(st.integers(1, 70)), draw(st.integers(1, 150))
    block_size = draw(st.sampled_from([2, 14, 64]))
    lead = draw(st.sampled_from([(rows,), (1, rows), (rows, 1)]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    qw = quantize(rng.standard_normal((out_f, in_f)), kind, block_size)
    x = rng.standard_normal(lead + (in_f,)).astype(dtype)
    g = rng.standard_normal(lead + (out_f,)).astype(dtype)
    b = rng.standard_normal(out_f).astype(dtype) if draw(st.booleans()) else None
    if draw(st.booleans()):                                   # a non-contiguous input
        x = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    fast, ref = cpu_ops.FAST["quant_linear"], backend.reference("quant_linear")
    w = np.abs(dequantize(qw, np.float64))
    before = x.copy(), g.copy()
    y_fast, y_ref = fast.forward(x, qw, b), ref.forward(x, qw, b)
    close(y_fast, y_ref, dtype, float((np.abs(x).reshape(-1, in_f) @ w.T).max()) + 1, f"forward {kind}")
    gx_fast, gx_ref = fast.backward(g, qw), ref.backward(g, qw)
    close(gx_fast, gx_ref, dtype, float((np.abs(g).reshape(-1, out_f) @ w).max()) + 1, f"backward {kind}")
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(g, before[1])


@pytest.mark.parametrize("build", ["parallel", "serial"])
@pytest.mark.parametrize("kind", QUANT_KINDS)
def test_builds_and_chunks_agree(build, kind, monkeypatch):
    """Both builds of every kernel, and dequantization in several chunks of output rows."""
    rng = np.random.default_rng(2)
    qw = quantize(rng.standard_normal((45, 100)), kind, 14)
    ref = backend.reference("quant_linear")
    monkeypatch.setattr(_jit, "FORCE_BUILD", build)
    monkeypatch.setattr(kq, "CHUNK_ELEMENTS", 7 * 112)        # 7 rows per chunk
    for rows in (2, 30):
        x, g = rng.standard_normal((rows, 100)).astype(np.float32), rng.standard_normal((rows, 45)).astype(np.float32)
        close(kq.quant_linear_forward(x, qw, None), ref.forward(x, qw, None), np.float32, 100.0, "forward")
        close(kq.quant_linear_backward(g, qw), ref.backward(g, qw), np.float32, 100.0, "backward")


# ---- the op: forward formula and gradcheck -------------------------------------------------------

@pytest.mark.parametrize("mode", ["reference", "fast"])
@pytest.mark.parametrize("kind", QUANT_KINDS)
@given(data=st.data())
def test_quant_linear_gradcheck(mode, kind, data):
    draw = data.draw
    out_f, in_f = draw(st.integers(1, 5)), draw(st.integers(1, 9))
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 2), (1, 10)]))
    qw = quantize(draw(arrays((out_f, in_f))), kind, draw(st.sampled_from([2, 4, 64])))
    x, b = draw(arrays(lead + (in_f,))), draw(arrays((out_f,)))
    train_bias = draw(st.booleans())
    w = dequantize(qw, np.float64)
    with tg.use_kernels(mode):
        y = quant_linear(T(x), qw, T(b, requires_grad=train_bias))
        assert y.dtype == np.float64 and y.shape == lead + (out_f,)
        np.testing.assert_allclose(y.numpy(), x @ w.T + b, rtol=1e-10, atol=1e-12)
        assert gradcheck(lambda x, b: quant_linear(x, qw, b), [T(x), T(b, requires_grad=train_bias)])
        assert gradcheck(lambda x: quant_linear(x, qw), [T(x)])


def test_gradients_go_to_the_input_only_and_nothing_of_w_stays_on_the_tape():
    rng = np.random.default_rng(3)
    qw = quantize(rng.standard_normal((300, 256)).astype(np.float32), "nf4")
    x = tg.Tensor(rng.standard_normal((4, 5, 256)).astype(np.float32), requires_grad=True)
    b = tg.Tensor(np.zeros(300, np.float32))
    y = quant_linear(x, qw, b)
    node = y._ctx
    assert isinstance(node, QuantLinear)
    saved = [v for v in vars(node).values() if isinstance(v, np.ndarray)]
    assert all(a.size < 300 * 256 for a in saved), "a float copy of W is kept on the autograd tape"
    assert node.qweight is qw
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.ones((4, 5, 300), np.float32) @ dequantize(qw), rtol=1e-4, atol=1e-4)
    assert x.grad.dtype == np.float32 and b.grad is None


# ---- QuantizedLinear and quantize_model -------------------------------------------------------------

def tiny_gpt():
    tg.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=64))


def ids():
    return np.random.default_rng(4).integers(0, 50, (2, 16))


def logits(model):
    with tg.no_grad():
        out, _ = model(ids(), all_logits=True)                       # (B, T, V)
    return out.numpy()


def test_quantized_linear_from_linear():
    tg.manual_seed(1)
    lin = Linear(70, 9)
    for kind in QUANT_KINDS:
        q = QuantizedLinear.from_linear(lin, kind, block_size=32)
        assert (q.in_features, q.out_features, q.kind) == (70, 9, kind)
        assert q.bias.data is lin.bias.data and not q.bias.requires_grad
        assert q.parameters() == [q.bias] and list(q.state_dict()) == ["bias"]
        w = q.dequantized_weight()
        assert w.dtype == np.float32 and w.shape == (9, 70)
        x = np.random.default_rng(5).standard_normal((3, 70)).astype(np.float32)
        np.testing.assert_allclose(q(tg.Tensor(x)).numpy(), x @ w.T + lin.bias.data, rtol=1e-5, atol=1e-5)
        assert f"kind={kind}" in repr(q) and ("block_size=32" in repr(q)) == (kind == "nf4")
    assert QuantizedLinear.from_linear(Linear(4, 3, bias=False), "int8").bias is None


def test_quantize_model_in_a_tiny_gpt():
    float_model = tiny_gpt()
    ref = logits(float_model)
    errors = {}
    for kind in QUANT_KINDS:
        model = quantize_model(tiny_gpt(), kind)
        quantized = [p for p, m in model.named_modules() if isinstance(m, QuantizedLinear)]
        assert len(quantized) == 8 and all(m.kind == kind for m in model.modules() if isinstance(m, QuantizedLinear))
        assert type(model.lm_head) is Linear                                   # the output layer stays float
        assert model.lm_head.weight is model.transformer.wte.weight            # still tied
        assert not any(isinstance(p, QuantizedWeight) for p in model.parameters())
        names = list(model.state_dict())
        assert not any(n.endswith(("c_attn.weight", "c_fc.weight", "c_proj.weight")) for n in names)
        assert "transformer.h.0.attn.c_attn.bias" in names
        out = logits(model)
        errors[kind] = float(np.linalg.norm(out - ref) / np.linalg.norm(ref))   # measured: 0.005 and 0.07
        assert errors[kind] < {"int8": 0.02, "nf4": 0.15}[kind], errors
        with tg.use_kernels("reference"):
            np.testing.assert_allclose(logits(model), out, rtol=1e-4, atol=1e-4)
        assert quantized_bytes(model) < quantized_bytes(float_model)
    assert errors["int8"] < errors["nf4"], errors


def test_backward_reaches_the_embeddings_through_the_quantized_layers():
    model = quantize_model(tiny_gpt(), "nf4")
    _, loss = model(ids(), np.roll(ids(), -1, axis=1))
    loss.backward()
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    assert wte.grad is not None and np.abs(wte.grad).sum() > 0
    assert wpe.grad is not None and np.abs(wpe.grad).sum() > 0                # only through the blocks
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            assert m.bias.grad is None


def test_float64_model_and_gradcheck_through_it():
    model = quantize_model(tiny_gpt(), "int8").to(dtype=np.float64)
    out = logits(model)
    assert out.dtype == np.float64
    model32 = quantize_model(tiny_gpt(), "int8")
    np.testing.assert_allclose(out, logits(model32), rtol=1e-4, atol=1e-4)
    wpe = model.transformer.wpe.weight
    x, y = ids(), np.roll(ids(), -1, axis=1)

    def loss(p):
        model.transformer.wpe.weight = p
        return model(x, y)[1]

    try:
        assert gradcheck(loss, [wpe], directional=True)
    finally:
        model.transformer.wpe.weight = wpe


def test_quantized_bytes():
    model = tiny_gpt()
    full = quantized_bytes(model)
    assert full == sum(p.data.nbytes for p in model.parameters())
    quantize_model(model, "nf4")
    linear = 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)                  # the quantized weights' values
    expect = full - 4 * linear + linear // 2 + 4 * (linear // 64)            # 4 bits each, a float32 per 64
    assert quantized_bytes(model) == expect


def test_quantize_model_skip_and_adapters():
    from tinygrad_lm.peft.layers import LoraLinear
    tg.manual_seed(2)
    net = Sequential(Linear(8, 8), Linear(8, 4))
    net.append(LoraLinear(Linear(4, 4), r=2, scale=1.0))
    quantize_model(net, "int8", skip=("0",))
    assert type(net[0]) is Linear and isinstance(net[1], QuantizedLinear)
    assert isinstance(net[2].base_layer, QuantizedLinear)                   # LoRA's base is quantized
    assert type(net[2].lora_A) is Linear and type(net[2].lora_B) is Linear   # its adapters stay float


# ---- errors name what is wrong ---------------------------------------------------------------------

def test_bad_inputs_get_clear_errors():
    w = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="2-D"):
        quantize(np.ones((2, 3, 4)), "int8")
    with pytest.raises(TypeError, match="float.*int64"):
        quantize(np.ones((3, 4), np.int64), "nf4")
    for bad in (np.nan, np.inf, -np.inf):
        w2 = w.copy()
        w2[1, 2] = bad
        with pytest.raises(ValueError, match=r"NaN or inf.*row 1, column 2"):
            quantize(w2, "int8")
    with pytest.raises(ValueError, match="unknown quantization kind 'int4'"):
        quantize(w, "int4")
    for bs in (0, -2, 3, 2.0, True, "64"):
        with pytest.raises(ValueError, match="block_size must be a positive even integer"):
            quantize(w, "nf4", bs)
    with pytest.raises(ValueError, match="1e\\+300 at row 0, column 0 is beyond float32's range"):
        quantize(np.full((1, 2), 1e300), "int8")
    with pytest.raises(ValueError, match="empty"):
        quantize(np.ones((0, 4)), "int8")
    qw = quantize(w, "nf4")
    with pytest.raises(ValueError, match=r"input of shape \(2, 5\) does not fit weight of shape \(3, 4\)"):
        quant_linear(tg.Tensor(np.ones((2, 5), np.float32)), qw)
    with pytest.raises(ValueError, match=r"bias has shape \(4,\), expected \(3,\)"):
        quant_linear(tg.Tensor(np.ones((2, 4), np.float32)), qw, tg.Tensor(np.ones(4, np.float32)))
    with pytest.raises(TypeError, match="QuantizedWeight"):
        quant_linear(tg.Tensor(np.ones((2, 4), np.float32)), w)
    with pytest.raises(TypeError, match="nn.Linear"):
        QuantizedLinear.from_linear(Sequential(), "nf4")
    with pytest.raises(ValueError, match="unknown quantization kind 'fp4'"):
        quantize_model(tiny_gpt(), "fp4")
