"""tinygrad_lm.functional (F.*): each function against a plain NumPy formula, and gradcheck."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_lm as tg
import tinygrad_lm.functional as F
from strategies import T, arrays, assert_close, broadcastable_shapes, check, distinct, shapes
from tinygrad_lm import Tensor, gradcheck

GRADCHECKED = {"Softmax", "LogSoftmax", "CrossEntropy", "LayerNorm", "RMSNorm", "Gelu", "Silu", "Embedding",
               "Linear", "Attention", "Rope",  # Attention: the fused op sdpa uses without a mask (test_sdpa) "Attention",  # Attention: test_sdpa modes "none" and "causal"
               "F.softmax", "F.log_softmax", "F.cross_entropy", "F.layer_norm", "F.rms_norm", "F.gelu", "F.silu", "F.swiglu", "SwiGLU",
               "F.relu", "F.rope", "F.dropout", "F.embedding", "F.linear", "F.scaled_dot_product_attention",
               "F.attention_scores"}


@pytest.fixture(autouse=True)
def _keep_global_rng():
    """dropout draws from the process-wide generator: leave it as we found it."""
    state = tg.get_rng().bit_generator.state
    yield
    tg.get_rng().bit_generator.state = state


# ---- NumPy references -----------------------------------------------------------------------------

def np_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    return e / np.where(s == 0, 1.0, s)  # a row of all -inf gives zeros


def np_log_softmax(x, axis=-1):
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def np_cross_entropy(logits, t, ignore_index=-100, reduction="mean"):
    C = logits.shape[-1]
    z, tt = logits.reshape(-1, C), t.reshape(-1)
    valid = tt != ignore_index
    logp = np_log_softmax(z)[np.arange(tt.size), np.where(valid, tt, 0)]
    loss = np.where(valid, -logp, 0.0)
    if reduction == "none":
        return loss.reshape(t.shape)
    if reduction == "sum":
        return np.asarray(loss.sum())
    return np.asarray(loss.sum() / max(valid.sum(), 1))


def np_attention_scores(q, k, causal=False, mask=None, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = q @ np.swapaxes(k, -1, -2) * scale
    tq, tk = att.shape[-2:]
    if causal:  # bottom-right aligned: query i sees keys j <= i + (tk - tq)
        att = np.where(np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq), att, -np.inf)
    if mask is not None:
        att = np.where(mask, att, -np.inf) if mask.dtype == bool else att + mask
    return att


def np_sdpa(q, k, v, causal=False, mask=None, scale=None):
    return np_softmax(np_attention_scores(q, k, causal, mask, scale)) @ v


_erf = np.vectorize(math.erf)


# ---- softmax / log_softmax ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@given(data=st.data())
def test_softmax_log_softmax(name, data):
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    a = data.draw(arrays(shape, -5, 5))
    ref = np_softmax if name == "softmax" else np_log_softmax
    check(lambda x: getattr(F, name)(x, axis=axis), lambda x: ref(x, axis), a)
    check(lambda x: getattr(x, name)(axis), lambda x: ref(x, axis), a)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_huge_logits_are_finite(dtype):
    x = np.array([[1e4, 0.0, -1e4], [1e4, 1e4 - 1, 3.0], [-1e4, -1e4, -1e4]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        p = F.softmax(Tensor(x, dtype=dtype)).numpy()
        lp = F.log_softmax(Tensor(x, dtype=dtype)).numpy()
    assert p.dtype == dtype and lp.dtype == dtype
    assert np.isfinite(p).all() and np.isfinite(lp).all()
    np.testing.assert_allclose(p, np_softmax(x), rtol=1e-5, atol=1e-30)
    np.testing.assert_allclose(lp, np_log_softmax(x), rtol=1e-5)
    assert gradcheck(F.log_softmax, [T(x)]) and gradcheck(F.softmax, [T(x)])


@given(data=st.data())
def test_softmax_with_minus_inf_mask(data):
    """Masked logits (-inf) get probability 0; the others are finite and sum to 1; a fully
    masked row gives zeros (softmax). The gradient is finite and passes gradcheck."""
    shape = data.draw(shapes(min_dims=1))
    a = data.draw(arrays(shape, -5, 5))
    mask = data.draw(hnp.arrays(np.bool_, shape))
    x = np.where(mask, -np.inf, a)
    with np.errstate(divide="ignore", invalid="ignore"):  # a fully masked row: log_softmax is NaN
        p, lp = F.softmax(T(x)), F.log_softmax(T(x))
    assert_close(p, np_softmax(x))
    assert np.isfinite(p.numpy()).all()
    live = ~mask.all(axis=-1)
    np.testing.assert_allclose(p.numpy().sum(-1)[live], 1.0)
    lpv = lp.numpy()
    assert np.isfinite(lpv[~mask]).all() and (lpv[mask & live[..., None]] == -np.inf).all()
    with np.errstate(invalid="ignore"):  # a fully masked row's log_softmax is undefined
        ref = np_log_softmax(x)
    np.testing.assert_allclose(lpv[~mask], ref[~mask], rtol=1e-10, atol=1e-12)
    fns = [F.softmax] + ([lambda t: F.log_softmax(t).exp()] if live.all() else [])
    for fn in fns:
        assert gradcheck(lambda t: fn(t.masked_fill(mask, -np.inf)), [T(a)])
    x_t = T(x)
    F.softmax(x_t).backward(np.ones(shape))
    assert np.isfinite(x_t.grad).all()


# ---- cross_entropy -------------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(data=st.data(), ignore_index=st.sampled_from([-100, 1]))
def test_cross_entropy(reduction, data, ignore_index):
    lead = data.draw(shapes(min_dims=0, max_dims=2))
    C = data.draw(st.integers(1, 5))
    logits = data.draw(arrays(lead + (C,), -5, 5))
    targets = data.draw(hnp.arrays(np.int64, lead, elements=st.sampled_from(list(range(C)) + [ignore_index])))
    ref = np_cross_entropy(logits, targets, ignore_index, reduction)
    fn = lambda x: F.cross_entropy(x, targets, ignore_index=ignore_index, reduction=reduction)  # noqa: E731
    check(fn, lambda x: ref, logits)
    check(lambda x: F.cross_entropy(x, Tensor(targets), ignore_index, reduction), lambda x: ref, logits)


def test_cross_entropy_explicit_values():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.5], [1e4, 0.0, -1e4]])
    t = np.array([0, 2, 2])
    lp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    per = -lp[np.arange(3), t]
    assert_close(F.cross_entropy(T(logits), t, reduction="none"), per)
    assert_close(F.cross_entropy(T(logits), t), np.asarray(per.mean()))
    # ignored targets drop out of the sum and of the mean's count
    t2 = np.array([0, -100, 2])
    assert_close(F.cross_entropy(T(logits), t2), np.asarray((per[0] + per[2]) / 2))
    assert_close(F.cross_entropy(T(logits), t2, reduction="none"), np.array([per[0], 0.0, per[2]]))
    # every target ignored: mean is 0 (not NaN) and the gradient is 0
    x = T(logits)
    loss = F.cross_entropy(x, [-100, -100, -100])
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()


def test_cross_entropy_large_logits_gradcheck():
    logits = np.array([[1e4, 0.0, -1e4], [3.0, 1e4 - 2, 1e4]])
    assert np.isfinite(F.cross_entropy(T(logits), [2, 0]).item())
    assert gradcheck(lambda x: F.cross_entropy(x, [1, 0], reduction="sum"), [T(logits)])


# ---- layer_norm / rms_norm -----------------------------------------------------------------------

def np_layer_norm(x, w, b, eps=1e-5):
    y = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    y = y * w if w is not None else y
    return y + b if b is not None else y


def np_rms_norm(x, w, eps=1e-6):
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    return y * w if w is not None else y


@pytest.mark.parametrize("has_w,has_b", [(False, False), (True, False), (False, True), (True, True)])
@given(data=st.data())
def test_layer_norm(has_w, has_b, data):
    shape = data.draw(shapes(min_dims=1, max_side=5))
    C = shape[-1]
    x = data.draw(distinct(shape))  # distinct values: no near-constant rows, where eps dominates
    params = [data.draw(arrays((C,))) for _ in range(has_w + has_b)]

    def split(ps):
        w = ps[0] if has_w else None
        return w, (ps[-1] if has_b else None)

    check(lambda x, *ps: F.layer_norm(x, *split(ps)), lambda x, *ps: np_layer_norm(x, *split(ps)), x, *params)
    check(lambda x, *ps: F.layer_norm(x, *split(ps), eps=0.1),
          lambda x, *ps: np_layer_norm(x, *split(ps), eps=0.1), x, *params)


@pytest.mark.parametrize("has_w", [False, True])
@given(data=st.data())
def test_rms_norm(has_w, data):
    shape = data.draw(shapes(min_dims=1, max_side=5))
    x = data.draw(distinct(shape))
    params = [data.draw(arrays(shape[-1:]))] if has_w else []
    check(lambda x, *ps: F.rms_norm(x, *ps), lambda x, *ps: np_rms_norm(x, *(ps or [None])), x, *params)
    check(lambda x, *ps: F.rms_norm(x, *ps, eps=0.5), lambda x, *ps: np_rms_norm(x, *(ps or [None]), eps=0.5),
          x, *params)


def test_norm_params_must_match_last_axis():
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        F.layer_norm(T(np.ones((2, 4))), T(np.ones(3)))
    with pytest.raises(ValueError, match="rms_norm"):
        F.rms_norm(T(np.ones((2, 4))), T(np.ones(5)))


# ---- activations -------------------------------------------------------------------------------------

@given(data=st.data())
def test_gelu_exact_matches_erf_formula(data):
    a = data.draw(arrays(data.draw(shapes()), -6, 6))
    check(F.gelu, lambda x: x * 0.5 * (1 + _erf(x / math.sqrt(2))), a, rtol=1e-12, atol=1e-15)


@given(data=st.data())
def test_gelu_tanh(data):
    a = data.draw(arrays(data.draw(shapes()), -6, 6))
    check(lambda x: F.gelu(x, approximate="tanh"),
          lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))), a, rtol=1e-12)


def test_gelu_float32_and_bad_mode():
    x = np.linspace(-5, 5, 101)
    y = F.gelu(Tensor(x, dtype=np.float32))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), x * 0.5 * (1 + _erf(x / math.sqrt(2))), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(y, approximate="fast")


@given(data=st.data())
def test_silu(data):
    a = data.draw(arrays(data.draw(shapes()), -8, 8))
    check(F.silu, lambda x: x / (1 + np.exp(-x)), a, rtol=1e-12)


@given(data=st.data())
def test_swiglu(data):
    shape = data.draw(shapes(min_dims=1))
    a = data.draw(arrays(shape[:-1] + (2 * shape[-1],), -8, 8))
    H = shape[-1]
    check(F.swiglu, lambda h: h[..., :H] / (1 + np.exp(-h[..., :H])) * h[..., H:], a, rtol=1e-12)


def test_swiglu_odd_axis_is_an_error():
    with pytest.raises(ValueError, match="must be even"):
        F.swiglu(Tensor(np.zeros((2, 3))))


@given(half=st.integers(1, 5), lead=st.lists(st.integers(1, 3), max_size=2), T=st.integers(1, 4),
       pairing=st.sampled_from(["half", "adjacent"]), data=st.data())
def test_rope(half, lead, T, pairing, data):
    """Against the formula written per pair: (a, b) -> (a cos - b sin, b cos + a sin)."""
    hs = 2 * half
    x = data.draw(arrays(tuple(lead) + (T, hs), -3, 3))
    angles = data.draw(arrays((T, half), -7, 7))
    if pairing == "half":
        cos, sin = np.concatenate([np.cos(angles)] * 2, -1), np.concatenate([np.sin(angles)] * 2, -1)
        first, second = np.arange(half), np.arange(half) + half
    else:
        cos, sin = np.repeat(np.cos(angles), 2, -1), np.repeat(np.sin(angles), 2, -1)
        first, second = np.arange(0, hs, 2), np.arange(1, hs, 2)

    def formula(x):
        a, b, c, s = x[..., first], x[..., second], np.cos(angles), np.sin(angles)
        out = np.empty_like(x)
        out[..., first], out[..., second] = a * c - b * s, b * c + a * s
        return out
    check(lambda t: F.rope(t, cos, sin, pairing), formula, x, rtol=1e-12)


def test_rope_bad_arguments():
    x = Tensor(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="pairing"):
        F.rope(x, np.ones((2, 4)), np.ones((2, 4)), "rotate")
    with pytest.raises(ValueError, match="even last axis"):
        F.rope(Tensor(np.zeros((2, 3))), np.ones((2, 3)), np.ones((2, 3)))


@given(data=st.data())
def test_relu(data):
    check(F.relu, lambda x: np.maximum(x, 0), data.draw(distinct(data.draw(shapes()))))


def test_where_reexport():
    c = np.array([True, False])
    check(lambda x, y: F.where(c, x, y), lambda x, y: np.where(c, x, y), np.array([1.0, 2.0]), np.array([3.0, 4.0]))


# ---- dropout -------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_dropout_statistics_and_scale(p):
    tg.manual_seed(0)
    n = 100_000
    x = tg.ones(n, requires_grad=True)
    y = F.dropout(x, p)
    v = y.numpy()
    assert y.dtype == np.float32
    scale = np.float32(1 / (1 - p))
    assert set(np.unique(v)) <= {np.float32(0), scale}
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((v == 0).mean() - p) < 6 * sigma
    assert abs(v.mean() - 1) < 6 * sigma * float(scale)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, v)  # the gradient is the same mask and scale


def test_dropout_identity_cases():
    x = T(np.random.default_rng(0).standard_normal((3, 4)))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    y = F.dropout(x, 1.0)
    assert (y.numpy() == 0).all()
    y.sum().backward()
    assert (x.grad == 0).all()
    with pytest.raises(ValueError, match="p must be"):
        F.dropout(x, 1.5)


def test_dropout_gradcheck():
    a = np.random.default_rng(0).standard_normal((4, 5))

    def fn(x):  # the same mask on every call
        tg.manual_seed(7)
        return F.dropout(x, 0.4)
    assert gradcheck(fn, [T(a)])
    out = fn(T(a)).numpy()
    assert set(np.round(out[out != 0] / a[out != 0], 12)) == {round(1 / 0.6, 12)}


# ---- embedding / linear ------------------------------------------------------------------------------

@given(data=st.data(), V=st.integers(1, 5), D=st.integers(1, 3))
def test_embedding(data, V, D):
    w = data.draw(arrays((V, D)))
    ids = data.draw(hnp.arrays(np.int64, shapes(max_dims=2, max_side=6), elements=st.integers(0, V - 1)))
    check(lambda t: F.embedding(ids, t), lambda t: t[ids], w)
    check(lambda t: F.embedding(Tensor(ids), t), lambda t: t[ids], w)
    wt = T(w)
    out = F.embedding(ids, wt)
    g = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(g)
    expected = np.zeros((V, D))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, D))
    np.testing.assert_allclose(wt.grad, expected, rtol=1e-12)


def test_embedding_repeated_ids_scatter_add():
    w = T(np.arange(8.0).reshape(4, 2))
    out = F.embedding([[1, 1], [3, 1]], w)
    np.testing.assert_array_equal(out.numpy(), [[[2, 3], [2, 3]], [[6, 7], [2, 3]]])
    out.sum().backward()
    np.testing.assert_array_equal(w.grad, [[0, 0], [3, 3], [0, 0], [1, 1]])


@pytest.mark.parametrize("bias", [False, True])
@given(data=st.data(), n_in=st.integers(1, 4), n_out=st.integers(1, 4))
def test_linear(bias, data, n_in, n_out):
    lead = data.draw(shapes(max_dims=2))
    x = data.draw(arrays(lead + (n_in,)))
    params = [data.draw(arrays((n_out, n_in)))] + ([data.draw(arrays((n_out,)))] if bias else [])
    check(lambda x, w, *b: F.linear(x, w, *b), lambda x, w, *b: x @ w.T + (b[0] if b else 0), x, *params)


def test_linear_input_only_requires_grad():
    rng = np.random.default_rng(0)
    x, w = T(rng.standard_normal((2, 3, 4))), T(rng.standard_normal((5, 4)), requires_grad=False)
    F.linear(x, w).sum().backward()
    np.testing.assert_allclose(x.grad, np.ones((2, 3, 5)) @ w.numpy(), rtol=1e-12)
    assert w.grad is None


# ---- scaled_dot_product_attention ------------------------------------------------------------------

@given(data=st.data(), mode=st.sampled_from(["none", "causal", "bool", "float", "causal+bool"]),
       scale=st.sampled_from([None, 0.3]))
def test_sdpa(data, mode, scale):
    batch = data.draw(shapes(max_dims=2, max_side=2))
    tq = data.draw(st.integers(1, 4))
    tk = data.draw(st.integers(tq, 5))
    d, dv = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    q, k, v = (data.draw(arrays(batch + s, -2, 2)) for s in ((tq, d), (tk, d), (tk, dv)))
    mask = None
    if "bool" in mode or mode == "float":
        ms = data.draw(broadcastable_shapes(1, max_dims=len(batch) + 2, max_side=2).map(lambda s: s[0]))
        ms = ms[:max(len(ms) - 2, 0)] + (tq, tk)  # last two axes are (Tq, Tk) or broadcast to them
        if mode == "float":
            mask = data.draw(arrays(ms, -3, 0))
        else:
            mask = data.draw(hnp.arrays(np.bool_, ms))
            mask[..., -1] = True  # every query sees the last key (rows never fully masked)
    causal = "causal" in mode
    ref = np_sdpa(q, k, v, causal=causal, mask=mask, scale=scale)

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, causal=causal, mask=mask, scale=scale)
    check(fn, lambda *_: ref, q, k, v)
    if mask is not None:
        check(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal, mask=Tensor(mask), scale=scale),
              lambda *_: ref, q, k, v)


@given(data=st.data(), causal=st.booleans(), scale=st.sampled_from([None, 0.3]))
def test_attention_scores(data, causal, scale):
    """The scores sdpa's readable path softmaxes: masked entries -inf, the rest q k^T * scale.
    gradcheck sees a float mask only (finite outputs); the causal -inf entries are checked by value."""
    tq = data.draw(st.integers(1, 4))
    tk = data.draw(st.integers(tq, 5))
    d = data.draw(st.integers(1, 4))
    q, k = data.draw(arrays((2, tq, d), -2, 2)), data.draw(arrays((2, tk, d), -2, 2))
    mask = data.draw(arrays((tq, tk), -3, 0))
    got = F.attention_scores(T(q), T(k), causal=causal, scale=scale).numpy()
    np.testing.assert_array_equal(np.isinf(got), np.isinf(np_attention_scores(q, k, causal, scale=scale)))
    assert_close(np.where(np.isinf(got), 0, got), np.nan_to_num(np_attention_scores(q, k, causal, scale=scale),
                                                                neginf=0), rtol=1e-10, atol=1e-12)
    check(lambda q, k: F.attention_scores(q, k, mask=mask, scale=scale),
          lambda q, k: np_attention_scores(q, k, mask=mask, scale=scale), q, k)


def test_sdpa_causal_explicit():
    """With Tq == Tk the first query attends only to the first key: its output is v[0]."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 5, 3)) for _ in range(3))
    out = F.scaled_dot_product_attention(T(q), T(k), T(v), causal=True).numpy()
    np.testing.assert_allclose(out[:, 0], v[:, 0], rtol=1e-12)
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=True),
                     [T(q), T(k), T(v)], directional=True)


def test_sdpa_bad_shapes():
    with pytest.raises(ValueError, match=r"q \(2, 3\), k \(2, 4\)"):
        F.scaled_dot_product_attention(T(np.ones((2, 3))), T(np.ones((2, 4))), T(np.ones((2, 4))))
