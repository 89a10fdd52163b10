"""matmul with NumPy's rules: 1-D operands, 2-D, batched N-D with broadcast batch dims."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import T, arrays, assert_close, broadcastable_shapes, check
from tinygrad_lm import Tensor, gradcheck

GRADCHECKED = {"MatMul"}

side = st.integers(1, 4)


@given(data=st.data(), m=side, k=side, n=side, a1=st.booleans(), b1=st.booleans())
def test_matmul_1d_2d(data, m, k, n, a1, b1):
    """Every combination of 1-D and 2-D operands (1-D @ 1-D is an inner product)."""
    sa = (k,) if a1 else (m, k)
    sb = (k,) if b1 else (k, n)
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    check(lambda x, y: x @ y, np.matmul, a, b)
    check(lambda x, y: x.matmul(y), np.matmul, a, b)


@given(data=st.data(), m=side, k=side, n=side)
def test_matmul_batched_broadcast(data, m, k, n):
    ba, bb = data.draw(broadcastable_shapes(2, max_dims=2, max_side=3))
    a, b = data.draw(arrays(ba + (m, k))), data.draw(arrays(bb + (k, n)))
    check(lambda x, y: x @ y, np.matmul, a, b)


@given(data=st.data(), m=side, k=side, n=side, batch=st.lists(st.integers(1, 3), min_size=1, max_size=2))
def test_matmul_nd_with_1d_or_2d(data, m, k, n, batch):
    """N-D @ 2-D (the weight-like fast path), 2-D @ N-D, N-D @ 1-D, 1-D @ N-D."""
    batch = tuple(batch)
    cases = [(batch + (m, k), (k, n)), ((m, k), batch + (k, n)), (batch + (m, k), (k,)), ((k,), batch + (k, n))]
    for sa, sb in cases:
        check(lambda x, y: x @ y, np.matmul, data.draw(arrays(sa)), data.draw(arrays(sb)))


@pytest.mark.parametrize("which", [0, 1])
def test_matmul_one_side_requires_grad(which):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    x, y = T(a, requires_grad=which == 0), T(b, requires_grad=which == 1)
    (x @ y).sum().backward()
    grad = (x.grad if which == 0 else y.grad)
    expected = np.ones((2, 3, 5)) @ b.T if which == 0 else a.reshape(-1, 4).T @ np.ones((6, 5))
    np.testing.assert_allclose(grad, expected, rtol=1e-12)
    assert (y.grad if which == 0 else x.grad) is None


def test_matmul_large_directional():
    """Bigger tensors with the cheap directional check (two forwards per input)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 17, 33)), rng.standard_normal((33, 29))
    assert_close(T(a) @ T(b), a @ b, rtol=1e-12)
    assert gradcheck(lambda x, y: x @ y, [T(a), T(b)], directional=True)
    c = rng.standard_normal((2, 1, 33, 7))
    assert gradcheck(lambda x, y: x @ y, [T(a), T(c)], directional=True)


def test_rmatmul_with_ndarray():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    out = a @ T(b)
    assert isinstance(out, Tensor)
    assert_close(out, a @ b)
    assert gradcheck(lambda y: a @ y, [T(b)])
