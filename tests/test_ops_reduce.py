"""Reductions: sum mean max min var over axis int/tuple/None with keepdims."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import T, arrays, assert_close, axes, check, distinct, norm_axes, shapes
from tinygrad_lm import Tensor

GRADCHECKED = {"Sum", "Mean", "Max", "Var"}


def _reduce(name):
    return lambda axis, keepdims: (lambda x: getattr(x, name)(axis=axis, keepdims=keepdims))


@pytest.mark.parametrize("name", ["sum", "mean"])
@given(data=st.data(), keepdims=st.booleans())
def test_sum_mean(name, data, keepdims):
    shape = data.draw(shapes())
    axis = data.draw(axes(len(shape)))
    a = data.draw(arrays(shape))
    ref = getattr(np, name)
    check(_reduce(name)(axis, keepdims), lambda x: np.asarray(ref(x, axis=axis, keepdims=keepdims)), a)


@given(data=st.data(), keepdims=st.booleans())
def test_sum_empty(data, keepdims):
    shape = data.draw(shapes(min_dims=1, min_side=0))
    axis = data.draw(axes(len(shape)))
    a = data.draw(arrays(shape))
    check(_reduce("sum")(axis, keepdims), lambda x: np.asarray(np.sum(x, axis=axis, keepdims=keepdims)), a)


@pytest.mark.parametrize("name", ["max", "min"])
@given(data=st.data(), keepdims=st.booleans())
def test_max_min(name, data, keepdims):
    shape = data.draw(shapes())
    axis = data.draw(axes(len(shape)))
    a = data.draw(distinct(shape))  # no ties: the finite difference is then well defined
    ref = getattr(np, name)
    check(_reduce(name)(axis, keepdims), lambda x: np.asarray(ref(x, axis=axis, keepdims=keepdims)), a)


@pytest.mark.parametrize("name", ["max", "min"])
@given(data=st.data(), keepdims=st.booleans())
def test_max_min_gradient_splits_ties_evenly(name, data, keepdims):
    """Values on a coarse grid tie often; each tied extremum gets grad / (number of ties)."""
    shape = data.draw(shapes(min_dims=1))
    axis = data.draw(axes(len(shape)))
    a = data.draw(arrays(shape, -2, 2)).round()
    x = T(a)
    out = getattr(x, name)(axis=axis, keepdims=keepdims)
    g = np.random.default_rng(0).standard_normal(out.shape)
    out.backward(g)
    ax = norm_axes(axis, len(shape))
    ext = getattr(np, name)(a, axis=ax, keepdims=True)
    hit = (a == ext).astype(np.float64)
    gk = g if keepdims else g.reshape(ext.shape)
    np.testing.assert_allclose(x.grad, hit * gk / hit.sum(axis=ax, keepdims=True), rtol=1e-12)


def test_max_tie_explicit():
    x = T([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5, 0], [0.25, 0.25, 0.25, 0.25]])
    y = T([[4.0, -1.0], [-1.0, 0.0]])
    y.min().backward()  # two tied minima over all elements
    np.testing.assert_array_equal(y.grad, [[0, 0.5], [0.5, 0]])


@given(data=st.data(), keepdims=st.booleans(), ddof=st.sampled_from([0, 1]))
def test_var(data, keepdims, ddof):
    shape = data.draw(shapes())
    axis = data.draw(axes(len(shape)))
    n = int(np.prod([shape[i] for i in norm_axes(axis, len(shape))]))
    if n - ddof <= 0:
        ddof = 0
    a = data.draw(arrays(shape))
    check(lambda x: x.var(axis=axis, keepdims=keepdims, ddof=ddof),
          lambda x: np.asarray(np.var(x, axis=axis, keepdims=keepdims, ddof=ddof)), a)


def test_var_without_degrees_of_freedom_raises():
    with pytest.raises(ValueError, match="ddof"):
        T([1.0, 2.0]).var(ddof=2)


def test_reduce_0d_and_empty_axis_tuple():
    check(lambda x: x.sum(), lambda x: x.sum(), np.asarray(2.5))
    check(lambda x: x.mean(axis=()), lambda x: np.mean(x, axis=()), np.arange(6.0).reshape(2, 3))
    check(lambda x: x.max(axis=()), lambda x: np.max(x, axis=()), np.arange(6.0).reshape(2, 3))


def test_argmax_has_no_gradient():
    a = np.array([[1.0, 5.0, 2.0], [7.0, 0.0, 7.5]])
    x = T(a)
    out = x.argmax(axis=1)
    np.testing.assert_array_equal(out.numpy(), a.argmax(axis=1))
    assert not out.requires_grad and out._ctx is None
    assert x.argmax().item() == a.argmax()


def test_mean_of_float32_is_float32():
    x = Tensor(np.ones((3, 5), np.float32), requires_grad=True)
    for out in (x.mean(), x.sum(axis=0), x.var(axis=1), x.max(axis=(0, 1), keepdims=True)):
        assert out.dtype == np.float32
    assert_close(x.mean(axis=1), np.ones(3, np.float32))
