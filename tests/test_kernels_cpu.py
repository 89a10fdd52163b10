"""The Numba CPU kernels (kernels/cpu) equal their reference (forward, backward) pairs.

For every op in kernels/cpu/ops.FAST: the fast pair and backend.reference(op) get the same
hypothesis-drawn inputs (odd sizes, size-1 axes, single rows, decode-shaped attention,
non-contiguous views, huge logits, -inf masks) in float32 and float64, and must agree to
float rounding. Tolerances: rtol/atol RTOL, ATOL of the dtype, with atol scaled by the size of
the values involved (a float32 logit of 1e4 carries an absolute rounding error of ~1e-3).
Then the switch itself (use_kernels, TINYGRAD_LM_KERNELS, fallbacks), and a whole tiny GPT:
same loss and gradients in both modes, and a float64 gradcheck in fast mode."""
import inspect
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_lm as tg
import tinygrad_lm.optim  # noqa: F401  (registers the "adamw" reference)
from strategies import arrays, shapes
import test_quant
from tinygrad_lm import backend
from tinygrad_lm.backend import Impl
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.kernels import available
from tinygrad_lm.kernels.cpu import ops as cpu_ops
from tinygrad_lm.models import GPT, GPTConfig

FAST = cpu_ops.FAST
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ATOL = {np.float32: 1e-6, np.float64: 1e-12}
LAYOUTS = ("contiguous", "transposed", "reversed", "strided")
# quant_linear's equality test lives with its op (tests/test_quant.py); listed here it runs here too
test_quant_linear_matches_reference = test_quant.test_quant_linear_matches_reference


def pair(op):
    return FAST[op], backend.reference(op)


def close(actual, expected, dtype, scale=1.0, what="", rtol=RTOL, atol=ATOL):
    """Same shape and dtype, and equal up to rtol and atol * scale (inf and NaN must match).
    rtol/atol: tolerance per dtype (the CUDA-simulator tests pass their own)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=rtol[dtype], atol=atol[dtype] * scale, err_msg=what)


def amax(*arrays_):
    """max(1, the largest finite |value|) of the arrays."""
    vals = [np.abs(a[np.isfinite(a)]).max() for a in map(np.asarray, arrays_) if np.isfinite(a).any()]
    return max([1.0] + [float(v) for v in vals])


def layout(a, kind):
    """A copy of ``a`` with the same values, laid out as ``kind``: a transposed view, a view with
    negative strides, or every other element of a wider buffer (all non-contiguous)."""
    if kind == "transposed" and a.ndim >= 2:
        return np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    if kind == "reversed" and a.ndim >= 1:
        return np.ascontiguousarray(a[..., ::-1])[..., ::-1]
    if kind == "strided" and a.ndim >= 1:
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]
    return a.copy()


def run_both(fn_fast, fn_ref, *args):
    """Call both on the same arguments (layouts kept); check neither changed its inputs."""
    before = [a.copy() if isinstance(a, np.ndarray) else None for a in args]
    with np.errstate(all="ignore"):  # -inf masks: both sides produce the same infs on purpose
        out_fast = fn_fast(*args)
        _unchanged(args, before, "fast kernel")
        out_ref = fn_ref(*args)
        _unchanged(args, before, "reference")
    return out_fast, out_ref


def _unchanged(args, before, who):
    for a, b in zip(args, before):
        if b is not None:
            np.testing.assert_array_equal(a, b, err_msg=f"the {who} changed its input")


def values(draw, shape, dtype, lo=-3.0, hi=3.0):
    return draw(arrays(shape, lo, hi)).astype(dtype)


lead_dims = shapes(min_dims=0, max_dims=3, max_side=3)     # several leading batch dims, size-1 axes
layouts = st.sampled_from(LAYOUTS)


# ---- softmax ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_softmax_matches_reference(dtype, data):
    draw = data.draw
    shape = draw(lead_dims) + (draw(st.integers(1, 9)),)
    mag = draw(st.sampled_from([1.0, 1e4]))                              # huge logits too
    x = values(draw, shape, dtype) * dtype(mag)
    if draw(st.booleans()):                                              # -inf entries, maybe whole rows
        x[draw(hnp.arrays(np.bool_, shape))] = -np.inf
        if draw(st.booleans()):
            x.reshape(-1, shape[-1])[0] = -np.inf
    x = layout(x, draw(layouts))
    g = layout(values(draw, shape, dtype), draw(layouts))
    fast, ref = pair("softmax")

    y_fast, y_ref = run_both(fast.forward, ref.forward, x)
    close(y_fast, y_ref, dtype, what="softmax forward")
    masked = np.isneginf(x).all(axis=-1)
    assert (y_fast[masked] == 0).all(), "a fully masked row must give zeros, not NaN"
    assert np.isfinite(y_fast).all()
    dx_fast, dx_ref = run_both(fast.backward, ref.backward, y_ref, g)
    close(dx_fast, dx_ref, dtype, scale=amax(g) * shape[-1], what="softmax backward")


# ---- cross-entropy ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_cross_entropy_matches_reference(dtype, data):
    draw = data.draw
    N, C = draw(st.integers(1, 7)), draw(st.integers(1, 9))
    ignore_index = draw(st.sampled_from([-1, -100, C - 1]))
    mag = draw(st.sampled_from([1.0, 1e4]))
    z = values(draw, (N, C), dtype) * dtype(mag)
    t = draw(hnp.arrays(np.int64, N, elements=st.integers(0, C - 1)))
    ignored = draw(st.sampled_from(["none", "some", "all"]))
    if ignored == "all":
        t[:] = ignore_index
    elif ignored == "some":
        t[draw(hnp.arrays(np.bool_, N))] = ignore_index
    t = t.astype(draw(st.sampled_from([np.int64, np.int32])))
    if draw(st.booleans()):  # masked classes (-inf), never a valid row's target, nor column 0 of an
        mask = draw(hnp.arrays(np.bool_, (N, C)))   # ignored row (see test_cross_entropy_reference_nan)
        mask[np.arange(N), np.where(t == ignore_index, 0, t)] = False
        z[mask] = -np.inf
    z = layout(z, draw(layouts))
    fast, ref = pair("cross_entropy")

    (loss_f, lse_f), (loss_r, lse_r) = run_both(fast.forward, ref.forward, z, t, ignore_index)
    scale = amax(z)                                          # lse ~ max logit: its rounding is absolute
    close(loss_f, loss_r, dtype, scale, what="cross_entropy losses")
    close(lse_f, lse_r, dtype, scale, what="cross_entropy lse")
    assert (loss_f[t == ignore_index] == 0).all()

    row_scale = draw(st.one_of(
        st.just(np.broadcast_to(dtype(1 / max(1, N)), (N,))),          # what a mean reduction passes
        hnp.arrays(np.float64, N, elements=st.floats(-2, 2, allow_subnormal=False)).map(lambda a: a.astype(dtype))))
    dz_f, dz_r = run_both(fast.backward, ref.backward, z, lse_r, t, ignore_index, row_scale)
    close(dz_f, dz_r, dtype, amax(row_scale), what="cross_entropy backward")
    assert (dz_f[t == ignore_index] == 0).all()


def test_cross_entropy_reference_nan_for_ignored_row_with_masked_column_0():
    z = np.array([[-np.inf, 1.0, 2.0], [0.0, 1.0, 2.0]])
    t = np.array([-1, 2])
    (loss_f, _), (loss_r, _) = run_both(FAST["cross_entropy"].forward, backend.reference("cross_entropy").forward,
                                        z, t, -1)
    assert loss_f[0] == 0
    close(loss_f, loss_r, np.float64)


# ---- layer norm and RMS norm -------------------------------------------------------------------

@st.composite
def norm_inputs(draw, dtype, bias=True):
    shape = draw(lead_dims) + (draw(st.integers(1, 9)),)
    C = shape[-1]
    x = values(draw, shape, dtype)
    if draw(st.booleans()):                               # constant rows: variance 0, rstd = 1/sqrt(eps)
        x.reshape(-1, C)[0] = x.reshape(-1)[0]
    w = values(draw, (C,), dtype, 0.2, 2.0) if draw(st.booleans()) else None
    b = values(draw, (C,), dtype) if bias and draw(st.booleans()) else None
    g = values(draw, shape, dtype)
    eps = draw(st.sampled_from([1e-5, 1e-6, 0.1]))
    return layout(x, draw(layouts)), w, b, layout(g, draw(layouts)), eps


def norm_scales(x, rstd, w, g):
    """Error scales: xhat is off by ~eps*|x|*rstd (float32 mean/rstd), amplified again by rstd in dx."""
    r = float(np.max(rstd))
    xhat = amax(x) * r
    gw = amax(g) * (amax(w) if w is not None else 1.0)
    n_rows = x.size // x.shape[-1]
    return dict(y=xhat * amax(w if w is not None else 1.0), dx=r * gw * (1 + xhat ** 2) * max(1.0, r * amax(x)),
                dw=n_rows * amax(g) * xhat * max(1.0, r * amax(x)))


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_layer_norm_matches_reference(dtype, data):
    x, w, b, g, eps = data.draw(norm_inputs(dtype))
    fast, ref = pair("layer_norm")
    (y_f, mean_f, rstd_f), (y_r, mean_r, rstd_r) = run_both(fast.forward, ref.forward, x, w, b, eps)
    s = norm_scales(x, rstd_r, w, g)
    close(y_f, y_r, dtype, s["y"] + amax(b if b is not None else 0.0), what="layer_norm y")
    close(mean_f, mean_r, dtype, amax(x), what="layer_norm mean")
    close(rstd_f, rstd_r, dtype, float(np.max(rstd_r)), what="layer_norm rstd")
    (dx_f, dw_f, db_f), (dx_r, dw_r, db_r) = run_both(fast.backward, ref.backward, g, x, mean_r, rstd_r, w)
    close(dx_f, dx_r, dtype, s["dx"], what="layer_norm dx")
    close(dw_f, dw_r, dtype, s["dw"], what="layer_norm dw")
    close(db_f, db_r, dtype, amax(g) * (x.size // x.shape[-1]), what="layer_norm db")


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_rms_norm_matches_reference(dtype, data):
    x, w, _, g, eps = data.draw(norm_inputs(dtype, bias=False))
    fast, ref = pair("rms_norm")
    (y_f, rstd_f), (y_r, rstd_r) = run_both(fast.forward, ref.forward, x, w, eps)
    s = norm_scales(x, rstd_r, w, g)
    close(y_f, y_r, dtype, s["y"], what="rms_norm y")
    close(rstd_f, rstd_r, dtype, float(np.max(rstd_r)), what="rms_norm rstd")
    (dx_f, dw_f), (dx_r, dw_r) = run_both(fast.backward, ref.backward, g, x, rstd_r, w)
    close(dx_f, dx_r, dtype, s["dx"], what="rms_norm dx")
    close(dw_f, dw_r, dtype, s["dw"], what="rms_norm dw")


# ---- GELU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_gelu_matches_reference(dtype, approximate, data):
    draw = data.draw
    shape = draw(shapes(min_dims=0, max_dims=3, max_side=5))
    mag = draw(st.sampled_from([1.0, 3.0, 1e4]))                      # large |x|: tails and x**3
    x = layout(values(draw, shape, dtype) * dtype(mag), draw(layouts))
    g = layout(values(draw, shape, dtype), draw(layouts))
    fast, ref = pair("gelu")
    y_f, y_r = run_both(fast.forward, ref.forward, x, approximate)
    close(y_f, y_r, dtype, what="gelu forward")
    dx_f, dx_r = run_both(fast.backward, ref.backward, x, g, approximate)
    # tanh form: 0.5 (1 + t) and 0.5 x (1 - t^2) du cancel for x << 0; 1 - t^2 carries an absolute
    # rounding error ~eps, times 0.5 |x| du (up to ~20 before t rounds to +-1, |x| ~ 8)
    xm = min(amax(x), 8.0)
    cancel = 0.5 * xm * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * xm * xm) if approximate == "tanh" else 1.0
    close(dx_f, dx_r, dtype, amax(g) * cancel, what="gelu backward")
    assert np.isfinite(y_f).all() and np.isfinite(dx_f).all()


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_silu_matches_reference(dtype, data):
    draw = data.draw
    shape = draw(shapes(min_dims=0, max_dims=3, max_side=5))
    mag = draw(st.sampled_from([1.0, 10.0, 1e4]))                     # large |x|: exp overflows
    x = layout(values(draw, shape, dtype) * dtype(mag), draw(layouts))
    g = layout(values(draw, shape, dtype), draw(layouts))
    fast, ref = pair("silu")
    y_f, y_r = run_both(fast.forward, ref.forward, x)
    close(y_f, y_r, dtype, what="silu forward")
    dx_f, dx_r = run_both(fast.backward, ref.backward, x, g)
    close(dx_f, dx_r, dtype, amax(g), what="silu backward")
    assert np.isfinite(y_f).all() and np.isfinite(dx_f).all()


# ---- vector math (kernels/cpu/_math.py) -----------------------------------------------------------

def _math_kernels():
    """fexp, ftanh and normal_cdf applied elementwise inside a loop compiled like the kernels."""
    import numba
    from tinygrad_lm.kernels.cpu import _jit
    from tinygrad_lm.kernels.cpu._math import fexp, ftanh, normal_cdf

    def elementwise(fn):
        @numba.njit(fastmath=_jit.FASTMATH, error_model="numpy")
        def run(x):
            y = np.empty_like(x)
            for i in range(x.size):
                y[i] = fn(x[i])
            return y
        return run
    return elementwise(fexp), elementwise(ftanh), elementwise(normal_cdf)


def test_float32_vector_math_accuracy():
    """The float32 exp/tanh/normal CDF against float64 math, over their whole ranges."""
    run_exp, run_tanh, run_cdf = _math_kernels()
    specials = np.array([-np.inf, np.inf, np.nan, -1e30, 1e30, 0.0, -0.0, 1e-30, -1e-30], np.float32)
    x = np.concatenate([np.linspace(-110, 95, 400_001), np.linspace(-1, 1, 100_001)]).astype(np.float32)
    x64 = x.astype(np.float64)

    def ulps(got, want):  # error in units of float32's spacing at the exact value
        want32 = want.astype(np.float32)
        spacing = np.spacing(np.abs(want32)).astype(np.float64)
        return np.abs(got.astype(np.float64) - want) / spacing

    with np.errstate(over="ignore"):
        want = np.exp(x64)
    got = run_exp(x)
    assert ulps(got[want < 3e38], want[want < 3e38]).max() <= 1.0
    assert np.isposinf(got[want > 3.5e38]).all()
    with np.errstate(over="ignore", invalid="ignore"):
        np.testing.assert_array_equal(run_exp(specials), np.exp(specials.astype(np.float64)).astype(np.float32))

    assert ulps(run_tanh(x), np.tanh(x64)).max() <= 4.0
    np.testing.assert_array_equal(run_tanh(specials), np.tanh(specials))

    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x64])
    got = run_cdf(x).astype(np.float64)
    normal = x64 > -13                                  # Phi(-13) ~ 6e-39: still a normal float32
    assert (np.abs(got[normal] - cdf[normal]) / cdf[normal]).max() < 2e-7
    np.testing.assert_array_equal(run_cdf(np.array([-np.inf, np.inf, np.nan], np.float32)), [0.0, 1.0, np.nan])


# ---- attention -----------------------------------------------------------------------------------

@st.composite
def attention_inputs(draw, dtype):
    lead = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    kind = draw(st.sampled_from(["decode", "square", "shorter_q", "any"]))
    tq, tk = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    if kind == "decode":              # KV-cache step: one query, every cached key
        tq, tk = 1, max(tk, 2)
    elif kind == "square":
        tk = tq
    elif kind == "shorter_q":
        tq, tk = min(tq, tk - 1) or 1, max(tk, 2)
    D, Dv = draw(st.integers(1, 6)), draw(st.integers(1, 5))
    scale = draw(st.sampled_from([1 / math.sqrt(D), 0.25, 2.0]))
    q = layout(values(draw, lead + (tq, D), dtype, -2, 2), draw(layouts))
    k = layout(values(draw, lead + (tk, D), dtype, -2, 2), draw(layouts))
    v = layout(values(draw, lead + (tk, Dv), dtype), draw(layouts))
    dout = layout(values(draw, lead + (tq, Dv), dtype), draw(layouts))
    return q, k, v, dout, scale, draw(st.booleans())


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_attention_matches_reference(dtype, data):
    q, k, v, dout, scale, causal = data.draw(attention_inputs(dtype))
    fast, ref = pair("attention")
    (out_f, lse_f), (out_r, lse_r) = run_both(fast.forward, ref.forward, q, k, v, scale, causal)
    smax = 1 + amax(q) * amax(k) * q.shape[-1] * scale          # bound on |score|: exp amplifies its error
    close(out_f, out_r, dtype, smax * amax(v), what="attention out")
    close(lse_f, lse_r, dtype, smax, what="attention lse")
    tq, tk = q.shape[-2], k.shape[-2]
    if causal and tq > tk:        # queries that see no key: zeros and lse -inf, in both
        assert (out_f[..., :tq - tk, :] == 0).all() and np.isneginf(lse_f[..., :tq - tk]).all()

    (dq_f, dk_f, dv_f), (dq_r, dk_r, dv_r) = run_both(fast.backward, ref.backward, q, k, v, out_r, lse_r, dout,
                                                      scale, causal)
    s = smax * amax(dout) * amax(v) * max(tq, tk)
    close(dq_f, dq_r, dtype, s * amax(k) * max(1, scale), what="attention dq")
    close(dk_f, dk_r, dtype, s * amax(q) * max(1, scale), what="attention dk")
    close(dv_f, dv_r, dtype, s, what="attention dv")


@pytest.mark.parametrize("lead", [(5,), (2, 3), (2, 1, 3)])
def test_attention_any_number_of_leading_dims(lead):
    """(..., T, D) with 1-3 leading dims (the kernel itself takes (B, H, T, D)), with a tail row."""
    rng = np.random.default_rng(1)
    q, k, v, g = (rng.standard_normal(lead + (5, 3)).astype(np.float64) for _ in range(4))
    fast, ref = pair("attention")
    (out_f, lse_f), (out_r, lse_r) = run_both(fast.forward, ref.forward, q, k, v, 0.5, True)
    close(out_f, out_r, np.float64, what="out")
    close(lse_f, lse_r, np.float64, what="lse")
    grads = run_both(fast.backward, ref.backward, q, k, v, out_r, lse_r, g, 0.5, True)
    for name, a, b in zip(("dq", "dk", "dv"), *grads):
        close(a, b, np.float64, what=name)


def test_attention_reads_fused_qkv_views_and_writes_bthd():
    """The model's layout: q, k, v are (B, H, T, D) views of one (B, T, 3C) projection (read in
    place), and the output is a view of a (B, T, H, D) array, so the module's transpose +
    reshape back to (B, T, C) costs no copy."""
    B, H, T, D = 2, 3, 7, 4
    qkv = np.random.default_rng(2).standard_normal((B, T, 3 * H * D)).astype(np.float32)
    q, k, v = (qkv[..., i * H * D:(i + 1) * H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3))
    out, lse = FAST["attention"].forward(q, k, v, 0.5, True)
    ref_out, _ = backend.reference("attention").forward(q, k, v, 0.5, True)
    close(out, ref_out, np.float32, what="out")
    assert out.transpose(0, 2, 1, 3).flags.c_contiguous
    dq, dk, dv = FAST["attention"].backward(q, k, v, out, lse, out * 0 + 1, 0.5, True)
    assert all(d.transpose(0, 2, 1, 3).flags.c_contiguous for d in (dq, dk, dv))


# ---- embedding ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_embedding_matches_reference(dtype, data):
    draw = data.draw
    num = draw(st.integers(1, 6))
    id_shape = draw(shapes(min_dims=1, max_dims=3, max_side=5))
    ids = draw(hnp.arrays(draw(st.sampled_from([np.int64, np.int32])), id_shape,
                          elements=st.integers(0, num - 1)))            # few rows: ids repeat
    C = draw(st.integers(1, 7))
    g = layout(values(draw, id_shape + (C,), dtype), draw(layouts))
    fast, ref = pair("embedding")
    assert fast.forward is None and ref.forward is None                 # the forward is a gather
    dw_f, dw_r = run_both(fast.backward, ref.backward, ids, g, num)
    close(dw_f, dw_r, dtype, amax(g) * ids.size, what="embedding backward")


def test_embedding_repeated_ids_add_up():
    ids = np.array([[2, 0, 2], [2, 1, 0]])
    g = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    dw = FAST["embedding"].backward(ids, g, 4)
    np.testing.assert_array_equal(dw[2], g[0, 0] + g[0, 2] + g[1, 0])
    np.testing.assert_array_equal(dw[3], 0)
    assert dw.dtype == np.float32


# ---- AdamW -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_adamw_matches_reference(dtype, data):
    draw = data.draw
    shape = draw(shapes(min_dims=1, max_dims=3, max_side=5))
    lr = draw(st.sampled_from([1e-3, 3e-2, 0.5]))
    beta1, beta2 = draw(st.sampled_from([(0.9, 0.999), (0.9, 0.95), (0.0, 0.5)]))
    eps = draw(st.sampled_from([1e-8, 1e-3]))
    weight_decay = draw(st.sampled_from([0.0, 0.01, 0.1]))
    p = values(draw, shape, dtype)
    fast, ref = pair("adamw")
    state = {"fast": [p.copy(), np.zeros_like(p), np.zeros_like(p)],
             "ref": [p.copy(), np.zeros_like(p), np.zeros_like(p)]}
    for step in range(1, draw(st.integers(1, 4)) + 1):
        g = values(draw, shape, dtype)
        for name, update in (("fast", fast.forward), ("ref", ref.forward)):
            pp, m, v = state[name]
            assert update(pp, g, m, v, step, lr, beta1, beta2, eps, weight_decay) is None   # in place
        for i, what in enumerate(("p", "m", "v")):
            close(state["fast"][i], state["ref"][i], dtype, amax(state["ref"][i]) * step,
                  what=f"adamw {what} after step {step}")


def test_fast_adamw_refuses_non_contiguous_arrays():
    p = np.zeros((3, 4)).T
    with pytest.raises(ValueError, match="contiguous"):
        FAST["adamw"].forward(p, p.copy(), p.copy(), p.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0)


# ---- the table and the switch --------------------------------------------------------------------

def test_every_fast_op_is_tested_here():
    tested = {n[len("test_"):-len("_matches_reference")] for n in globals()
              if n.startswith("test_") and n.endswith("_matches_reference")}
    assert set(FAST) <= tested, f"fast CPU ops without an equality test: {sorted(set(FAST) - tested)}"


@pytest.mark.parametrize("op", sorted(FAST))
def test_fast_signatures_match_the_reference(op):
    for fast_fn, ref_fn in zip(FAST[op], backend.reference(op)):
        assert (fast_fn is None) == (ref_fn is None)
        if fast_fn is not None:
            assert list(inspect.signature(fast_fn).parameters) == list(inspect.signature(ref_fn).parameters)


def test_available_lists_the_cpu_ops():
    cpu = available()["cpu"]
    assert cpu == sorted(FAST)
    assert {"softmax", "cross_entropy", "layer_norm", "rms_norm", "gelu", "attention", "embedding",
            "adamw"} <= set(cpu)
    assert backend.fast_table("cpu") is FAST


def test_use_kernels_selects_the_implementation():
    x = np.zeros((2, 3), np.float32)
    with tg.use_kernels("reference"):
        assert tg.kernel_mode() == "reference"
        for op in FAST:
            assert backend.implementation(op, x) is backend.reference(op)
    with tg.use_kernels("fast"):
        assert tg.kernel_mode() == "fast"
        for op in FAST:
            assert backend.implementation(op, x) is FAST[op]
            assert backend.implementation(op, x.astype(np.float64)) is FAST[op]


def test_use_kernels_context_restores_the_previous_mode():
    before = tg.kernel_mode()
    try:
        tg.use_kernels("fast")                                   # a plain call switches for good
        assert tg.kernel_mode() == "fast"
        with tg.use_kernels("reference"):
            assert tg.kernel_mode() == "reference"
            with tg.use_kernels("fast"):
                assert tg.kernel_mode() == "fast"
            assert tg.kernel_mode() == "reference"
        assert tg.kernel_mode() == "fast"
        with pytest.raises(RuntimeError, match="boom"):
            with tg.use_kernels("reference"):
                raise RuntimeError("boom")
        assert tg.kernel_mode() == "fast"                        # restored after an exception too
    finally:
        tg.use_kernels(before)
    assert tg.kernel_mode() == before


def test_use_kernels_rejects_an_unknown_mode():
    before = tg.kernel_mode()
    with pytest.raises(ValueError, match="'turbo'"):
        tg.use_kernels("turbo")
    assert tg.kernel_mode() == before


def test_non_float32_64_falls_back_to_the_reference():
    with tg.use_kernels("fast"):
        for op in FAST:
            assert backend.implementation(op, np.zeros(3, np.float16)) is backend.reference(op)
        x = tg.Tensor(np.linspace(-2, 2, 12).reshape(3, 4).astype(np.float16), requires_grad=True)
        y = tg.functional.softmax(x)
        y.sum().backward()
        assert y.dtype == np.float16 and x.grad.dtype == np.float16
        np.testing.assert_allclose(y.numpy().sum(-1), 1, rtol=1e-3)


def _kernel_mode_in_subprocess(value):
    env = {**os.environ, backend.KERNELS_ENV: value}
    return subprocess.run([sys.executable, "-c", "import tinygrad_lm; print(tinygrad_lm.kernel_mode())"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value, mode", [("reference", "reference"), (" Fast ", "fast"), ("", "fast")])
def test_env_var_selects_the_mode(value, mode):
    r = _kernel_mode_in_subprocess(value)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == mode


def test_env_var_with_a_bogus_value_is_a_clear_error():
    r = _kernel_mode_in_subprocess("bogus")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError") and "TINYGRAD_LM_KERNELS" in last and "'bogus'" in last, r.stderr
    assert "reference" in last and "fast" in last                            # says what would be valid


# ---- the whole tiny GPT in both modes ---------------------------------------------------------------

GPT_VARIANTS = {
    "learned": {},
    "gelu_tanh": dict(mlp="gelu_tanh"),
    "rope": dict(pos="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "gqa": dict(n_kv_head=1),
}


def tiny_gpt(dtype=np.float32, **kw):
    tg.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, **kw))
    rng = np.random.default_rng(1)
    for name, p in model.named_parameters():        # larger than GPT-2's init: every path matters
        base = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0
        p.data[...] = base + rng.normal(0.0, 0.3, p.shape)
    return model.double() if dtype == np.float64 else model


def batch(seed=2):
    rng = np.random.default_rng(seed)
    idx, targets = rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))
    targets[1, 3] = targets[2, 0] = -1                                 # ignored positions
    return idx, targets


def counted_table(table: dict) -> tuple[dict, set]:
    """A copy of a FAST table whose kernels record their op name in the returned set when they run."""
    used = set()

    def wrap(op, fn):
        if fn is None:
            return None

        def counted(*args, **kwargs):
            used.add(op)
            return fn(*args, **kwargs)
        return counted

    return {op: Impl(wrap(op, i.forward), wrap(op, i.backward)) for op, i in table.items()}, used


def counting(monkeypatch):
    """Wrap every FAST kernel to record which ops run."""
    table, used = counted_table(FAST)
    for op, impl in table.items():
        monkeypatch.setitem(FAST, op, impl)
    return used


def run_model(model, idx, targets, step_grads=None):
    """-> loss, gradients, parameters after two AdamW steps (taken with step_grads when given: a
    gradient that is zero in exact arithmetic, like a key bias's, is rounding noise that Adam
    would blow up to +-lr), and the logits of one KV-cache decode step."""
    _, loss = model(idx, targets)
    loss.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.grad = (step_grads or grads)[n].copy()
    opt = model.configure_optimizers(weight_decay=0.1, learning_rate=1e-2)   # groups with and without decay
    for _ in range(2):
        opt.step()
    stepped = {n: p.data.copy() for n, p in model.named_parameters()}
    cache = model.new_cache(idx.shape[0])
    model(idx[:, :5], cache=cache)                                            # prefill
    decode, _ = model(idx[:, 5:6], cache=cache)                               # Tq = 1, Tk = 6
    return float(loss.numpy()), grads, stepped, decode.numpy()


@pytest.mark.parametrize("variant", list(GPT_VARIANTS))
def test_tiny_gpt_same_loss_and_gradients_in_both_modes(variant, monkeypatch):
    used = counting(monkeypatch)
    idx, targets = batch()
    with tg.use_kernels("reference"):
        ref = run_model(tiny_gpt(**GPT_VARIANTS[variant]), idx, targets)
    assert not used, f"reference mode ran fast kernels: {used}"
    with tg.use_kernels("fast"):
        fast = run_model(tiny_gpt(**GPT_VARIANTS[variant]), idx, targets, step_grads=ref[1])
    cfg = GPTConfig(vocab_size=11, **GPT_VARIANTS[variant])
    expected = {"attention", "cross_entropy", "embedding", "adamw",
                "rms_norm" if cfg.norm == "rmsnorm" else "layer_norm"} | ({"gelu"} if cfg.mlp != "swiglu" else {"silu"})
    assert expected <= used, f"fast mode did not run: {sorted(expected - used)}"

    tol = dict(rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast[0], ref[0], **tol, err_msg="loss")
    for name in ref[1]:
        np.testing.assert_allclose(fast[1][name], ref[1][name], **tol, err_msg=f"grad of {name}")
        assert fast[1][name].dtype == np.float32
        np.testing.assert_allclose(fast[2][name], ref[2][name], **tol, err_msg=f"{name} after 2 AdamW steps")
    np.testing.assert_allclose(fast[3], ref[3], **tol, err_msg="KV-cache decode logits")


@pytest.mark.parametrize("variant", ["learned", "llama_like"])
def test_tiny_gpt_gradcheck_float64_fast(variant):
    kw = {} if variant == "learned" else dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=1)
    model = tiny_gpt(np.float64, **kw)
    idx, targets = batch()
    params = model.parameters()
    index = {id(p): i for i, p in enumerate(params)}
    slots = [(m, k, index[id(v)]) for m in model.modules() for k, v in vars(m).items() if id(v) in index]

    def loss(*tensors):                                  # the model's loss as a function of its parameters
        for m, k, i in slots:
            setattr(m, k, tensors[i])
        return model(idx, targets)[1]

    with tg.use_kernels("fast"):
        try:
            assert loss(*params).dtype == np.float64
            assert gradcheck(loss, params, directional=True, seed=0)
        finally:
            loss(*params)                                # put the original parameters back


# ---- the op test modules run in both modes (tests/conftest.py) ------------------------------------

def test_op_test_modules_are_parametrized_over_kernel_modes(request, kernels):
    import conftest
    assert kernels is None                               # this module is not an op test module
    names = {"test_ops_elementwise": True, "test_ops_reduce": True, "test_functional": True,
             "tests.test_ops_matmul": True, "test_kernels_cpu": False, "test_model": False}
    for name, expected in names.items():
        assert conftest.is_op_test_module(SimpleNamespace(__name__=name)) is expected
    for item in request.session.items:                   # when they are collected with this file
        if conftest.is_op_test_module(item.module):
            assert item.callspec.params["kernels"] in ("reference", "fast"), item.nodeid


# ---- parallel and serial builds -------------------------------------------------------------------

def _all_kernel_outputs(rng):
    """Every kernel of the FAST table on one set of inputs (some ragged sizes, several rows)."""
    from tinygrad_lm.kernels.cpu import ops as K
    x = rng.standard_normal((37, 29)).astype(np.float32)
    g = rng.standard_normal((37, 29)).astype(np.float32)
    w, b = rng.standard_normal(29).astype(np.float32), rng.standard_normal(29).astype(np.float32)
    t = rng.integers(0, 29, 37)
    t[3] = -100
    q, k, v = (rng.standard_normal((3, 2, 9, 8)).astype(np.float32) for _ in range(3))
    y = K.softmax_forward(x)
    out = [y, K.softmax_backward(y, g)]
    losses, lse = K.cross_entropy_forward(x, t, -100)
    out += [losses, lse, K.cross_entropy_backward(x, lse, t, -100, np.full(37, 0.5, np.float32))]
    yl, mean, rstd = K.layer_norm_forward(x, w, b, 1e-5)
    out += [yl, *K.layer_norm_backward(g, x, mean, rstd, w)]
    yr, rr = K.rms_norm_forward(x, w, 1e-6)
    out += [yr, *K.rms_norm_backward(g, x, rr, w)]
    out += [K.gelu_forward(x, "none"), K.gelu_backward(x, g, "tanh")]
    out += [K.silu_forward(x), K.silu_backward(x, g)]
    o, ls = K.attention_forward(q, k, v, 0.3, True)
    out += [o, ls, *K.attention_backward(q, k, v, o, ls, rng.standard_normal(o.shape).astype(np.float32), 0.3, True)]
    p, m, vv = x.copy(), np.zeros_like(x), np.zeros_like(x)
    K.adamw_update(p, g, m, vv, 1, 1e-2, 0.9, 0.99, 1e-8, 0.1)
    return out + [p, m, vv]


def test_parallel_and_serial_builds_agree(monkeypatch):
    """Kernels run serial below a size threshold and parallel above it: both builds give the
    same results (the parallel norm backward sums per-chunk partials, so allow rounding)."""
    from tinygrad_lm.kernels.cpu import _jit
    monkeypatch.setattr(_jit, "FORCE_BUILD", "parallel")
    par = _all_kernel_outputs(np.random.default_rng(0))
    monkeypatch.setattr(_jit, "FORCE_BUILD", "serial")
    ser = _all_kernel_outputs(np.random.default_rng(0))
    for i, (a, b) in enumerate(zip(par, ser)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"output {i}")


def test_blas_idle_timeout_setting_is_read_forgivingly():
    """OPENBLAS_THREAD_TIMEOUT decides whether the kernels pin BLAS to 1 thread; a value that is
    not a number must not break `import tinygrad_lm` (OpenBLAS then keeps its default)."""
    from tinygrad_lm._threads import _short_timeout
    assert _short_timeout("4") and _short_timeout("8")
    assert not _short_timeout("28") and not _short_timeout("abc") and not _short_timeout("") and not _short_timeout(None)
