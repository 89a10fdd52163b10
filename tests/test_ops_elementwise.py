"""Elementwise ops: forward equals a NumPy formula, backward passes gradcheck (float64)."""
import operator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_lm as tg
from strategies import (T, arrays, assert_close, broadcastable_shapes, check, distinct, nonzero, positive,
                        shapes)
from tinygrad_lm import Tensor, gradcheck, where

GRADCHECKED = {"Add", "Sub", "Mul", "Div", "Pow", "PowScalar", "Neg", "Exp", "Log", "Sqrt", "Abs", "Tanh",
               "Sigmoid", "Relu", "Maximum", "Minimum", "Clip", "Where"}

BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}


# ---- + - * / with broadcasting --------------------------------------------------------------

@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_broadcast(name, data):
    op = BINARY[name]
    sa, sb = data.draw(broadcastable_shapes(2))
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    check(op, op, a, b)


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data())
def test_binary_broadcast_empty(name, data):
    op = BINARY[name]
    sa, sb = data.draw(broadcastable_shapes(2, min_dims=1, min_side=0))
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    check(op, op, a, b)


@pytest.mark.parametrize("name", BINARY)
@given(data=st.data(), scalar=st.one_of(st.integers(-3, 3), st.floats(-3, 3)))
def test_binary_python_scalar(name, data, scalar):
    """Both x (op) s and s (op) x, i.e. the reflected methods."""
    op = BINARY[name]
    a = data.draw(arrays(data.draw(shapes())))
    check(lambda x: op(x, scalar), lambda x: op(x, np.float64(scalar)), a)
    check(lambda x: op(scalar, x), lambda x: op(np.float64(scalar), x), a)


@given(data=st.data())
def test_div(data):
    sa, sb = data.draw(broadcastable_shapes(2))
    a, b = data.draw(arrays(sa)), data.draw(nonzero(sb))
    check(operator.truediv, operator.truediv, a, b)


@given(data=st.data(), s=st.floats(0.2, 3), negative=st.booleans())
def test_div_scalar_and_rdiv(data, s, negative):
    s = -s if negative else s
    shape = data.draw(shapes())
    check(lambda x: x / s, lambda x: x / s, data.draw(arrays(shape)))
    check(lambda x: s / x, lambda x: s / x, data.draw(nonzero(shape)))


@given(data=st.data())
def test_ndarray_operand_defers_to_tensor(data):
    """ndarray (op) Tensor uses Tensor's reflected operator (__array_priority__) and stays a Tensor."""
    sa, sb = data.draw(broadcastable_shapes(2, min_dims=1))
    a, b = data.draw(arrays(sa)), data.draw(nonzero(sb))
    for op in (operator.add, operator.sub, operator.mul, operator.truediv):
        out = op(a, T(b))
        assert isinstance(out, Tensor)
        assert_close(out, op(a, b))
        assert gradcheck(lambda y: op(a, y), [T(b)])


# ---- powers ------------------------------------------------------------------------------------

@given(data=st.data())
def test_pow_tensor_exponent(data):
    sa, sb = data.draw(broadcastable_shapes(2))
    a, b = data.draw(positive(sa)), data.draw(arrays(sb, -2, 2))
    check(operator.pow, np.power, a, b)


@given(data=st.data())
def test_pow_negative_base_integer_exponent(data):
    """Negative bases with integer-valued exponents: the base gradient is b a^(b-1); the exponent's
    gradient is documented as 0 where a <= 0 (ln a undefined)."""
    sa, sb = data.draw(broadcastable_shapes(2))
    a = -data.draw(positive(sa))
    b = data.draw(arrays(sb, -3, 3)).round()
    check(lambda x: x ** T(b, requires_grad=False), lambda x: x ** b, a)
    x, y = T(a), T(b)
    (x ** y).sum().backward()
    np.testing.assert_array_equal(y.grad, np.zeros(sb))


@pytest.mark.parametrize("p", [2, 3, 0, 1, -1, -2, 0.5, 1.5, -0.5, 2.5])
@given(data=st.data())
def test_pow_scalar(p, data):
    shape = data.draw(shapes())
    a = data.draw(positive(shape) if isinstance(p, float) else nonzero(shape))
    check(lambda x: x ** p, lambda x: x ** np.float64(p), a)


@pytest.mark.parametrize("p,expected", [(0, 0.0), (1, 1.0), (2, 0.0), (3, 0.0)])
def test_pow_scalar_gradient_at_zero(p, expected):
    x = T([0.0])
    (x ** p).sum().backward()
    assert x.grad[0] == expected


def test_pow_scalar_records_powscalar():
    x = T([1.0, 2.0])
    assert type((x ** 2)._ctx).__name__ == "PowScalar"
    assert type((x ** 2.5)._ctx).__name__ == "PowScalar"
    assert type((x ** T([2.0, 2.0], requires_grad=False))._ctx).__name__ == "Pow"


@given(data=st.data(), base=st.floats(0.2, 4))
def test_rpow(data, base):
    """scalar ** tensor: d/dx b^x = b^x ln b."""
    a = data.draw(arrays(data.draw(shapes()), -2, 2))
    check(lambda x: base ** x, lambda x: np.float64(base) ** x, a)


# ---- unary ----------------------------------------------------------------------------------------

UNARY = {
    "neg": (operator.neg, operator.neg, arrays),
    "exp": (Tensor.exp, np.exp, lambda s: arrays(s, -5, 5)),
    "log": (Tensor.log, np.log, positive),
    "sqrt": (Tensor.sqrt, np.sqrt, positive),
    "abs": (Tensor.abs, np.abs, distinct),
    "tanh": (Tensor.tanh, np.tanh, lambda s: arrays(s, -5, 5)),
    "sigmoid": (Tensor.sigmoid, lambda x: 1 / (1 + np.exp(-x)), lambda s: arrays(s, -8, 8)),
    "relu": (Tensor.relu, lambda x: np.maximum(x, 0), distinct),
}


@pytest.mark.parametrize("name", UNARY)
@given(data=st.data())
def test_unary(name, data):
    fn, np_fn, values = UNARY[name]
    check(fn, np_fn, data.draw(values(data.draw(shapes()))), rtol=1e-12)


@pytest.mark.parametrize("name", UNARY)
def test_unary_empty(name):
    fn, np_fn, _ = UNARY[name]
    a = np.zeros((2, 0, 3))
    check(fn, np_fn, a)


def test_sigmoid_extremes_do_not_overflow():
    x = Tensor(np.array([-1e4, -800.0, 0.0, 800.0, 1e4], dtype=np.float32), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = x.sigmoid()
        y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), np.array([0, 0, 0.5, 1, 1], np.float32))
    assert np.isfinite(x.grad).all()


def test_kinks_have_the_documented_gradient():
    """abs'(0) = 0 and relu'(0) = 0."""
    x = T([-1.0, 0.0, 2.0])
    (x.abs() + x.relu()).sum().backward()
    np.testing.assert_array_equal(x.grad, [-1.0, 0.0, 2.0])


# ---- maximum / minimum / clip ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["maximum", "minimum"])
@given(data=st.data())
def test_maximum_minimum(name, data):
    sa, sb = data.draw(broadcastable_shapes(2))
    na, nb = int(np.prod(sa)), int(np.prod(sb))
    both = data.draw(distinct((na + nb,)))  # no ties between any pair of elements
    a, b = both[:na].reshape(sa), both[na:].reshape(sb)
    check(getattr(Tensor, name), getattr(np, name), a, b)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_split_ties_evenly(name):
    a, b = T([1.0, 2.0, 3.0]), T([1.0, 0.0, 5.0])
    getattr(a, name)(b).sum().backward()
    win_a = [0.5, 1.0, 0.0] if name == "maximum" else [0.5, 0.0, 1.0]
    np.testing.assert_array_equal(a.grad, win_a)
    np.testing.assert_array_equal(b.grad, 1 - np.array(win_a))


def test_maximum_with_scalar():
    check(lambda x: x.maximum(0.1), lambda x: np.maximum(x, 0.1), np.array([-1.025, 0.525, 2.025]))


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.5), (None, 0.3), (-0.7, None), (1.0, 2.0)])
@given(data=st.data())
def test_clip(lo, hi, data):
    a = data.draw(distinct(data.draw(shapes())))  # grid offset by 0.025: never on a bound
    check(lambda x: x.clip(lo, hi), lambda x: np.clip(x, lo, hi), a)


def test_clip_gradient_passes_at_the_bounds():
    x = T([-2.0, -1.0, 0.0, 1.0, 2.0])
    x.clip(-1, 1).sum().backward()
    np.testing.assert_array_equal(x.grad, [0, 1, 1, 1, 0])


# ---- where / masked_fill ----------------------------------------------------------------------------

@given(data=st.data())
def test_where(data):
    sc, sa, sb = data.draw(broadcastable_shapes(3))
    cond = data.draw(arrays(sc)) > 0
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    check(lambda x, y: where(cond, x, y), lambda x, y: np.where(cond, x, y), a, b)
    check(lambda x, y: where(Tensor(cond), x, y), lambda x, y: np.where(cond, x, y), a, b)


@given(data=st.data(), s=st.floats(-3, 3))
def test_where_scalar_branch(data, s):
    sc, sa = data.draw(broadcastable_shapes(2))
    cond = data.draw(arrays(sc)) > 0
    a = data.draw(arrays(sa))
    check(lambda x: where(cond, x, s), lambda x: np.where(cond, x, s), a)
    check(lambda x: where(cond, s, x), lambda x: np.where(cond, s, x), a)


@given(data=st.data(), value=st.sampled_from([0.0, -1.5, -np.inf]))
def test_masked_fill(data, value):
    sm, sx = data.draw(broadcastable_shapes(2))
    mask = data.draw(arrays(sm)) > 0
    x = data.draw(arrays(sx))
    out_shape = np.broadcast_shapes(sm, sx)
    expected = np.where(mask, value, np.broadcast_to(x, out_shape))
    assert_close(T(x).masked_fill(mask, value), expected)
    # exp keeps the check finite when value is -inf (exp(-inf) = 0, as in attention masks)
    check(lambda t: t.masked_fill(mask, value).exp(), lambda t: np.exp(expected), x)


def test_where_needs_boolean_cond():
    with pytest.raises(TypeError, match="bool"):
        where(np.array([1, 0]), T([1.0, 2.0]), 0.0)


# ---- comparisons: boolean results, never differentiable ------------------------------------------

COMPARE = {"lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
           "eq": operator.eq, "ne": operator.ne}


@pytest.mark.parametrize("name", COMPARE)
@given(data=st.data())
def test_comparisons(name, data):
    op = COMPARE[name]
    sa, sb = data.draw(broadcastable_shapes(2))
    a = data.draw(arrays(sa, -2, 2)).round()  # rounding makes equal elements likely
    b = data.draw(arrays(sb, -2, 2)).round()
    for x, y, ref in ((T(a), T(b), op(a, b)), (T(a), 1.0, op(a, 1.0)), (T(a), b, op(a, b))):
        out = op(x, y)
        assert isinstance(out, Tensor)
        assert out.dtype == np.bool_
        assert not out.requires_grad and out._ctx is None
        np.testing.assert_array_equal(out.numpy(), ref)


def test_comparison_with_int_tensor():
    assert (tg.tensor([1, 2, 3]) < tg.tensor([1.5, 1.5, 1.5])).tolist() == [True, False, False]
