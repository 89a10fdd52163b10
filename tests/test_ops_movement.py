"""Movement ops: reshape transpose swapaxes T expand squeeze unsqueeze flatten getitem
concatenate stack split, and the differentiable cast (astype)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tinygrad_lm as tg
from strategies import T, arrays, assert_close, check, shapes
from tinygrad_lm import Tensor, concatenate, gradcheck, split, stack

GRADCHECKED = {"Reshape", "Transpose", "Expand", "GetItem", "Concatenate", "Cast"}


# ---- reshape / flatten / squeeze / unsqueeze ----------------------------------------------------

def _reshape_targets(shape):
    n = int(np.prod(shape))
    out = [(n,), (-1,), (1, n), (n, 1, 1), (-1, 1), tuple(reversed(shape)), shape + (1,)]
    out += [(d, n // d) for d in range(1, n + 1) if n % d == 0]
    out += [(d, -1) for d in range(1, n + 1) if n % d == 0]
    if n == 1:
        out.append(())
    return out


@given(data=st.data())
def test_reshape(data):
    shape = data.draw(shapes())
    new = data.draw(st.sampled_from(_reshape_targets(shape)))
    a = data.draw(arrays(shape))
    check(lambda x: x.reshape(*new), lambda x: x.reshape(new), a)
    check(lambda x: x.reshape(new), lambda x: x.reshape(new), a)


def test_reshape_empty_and_view_alias():
    check(lambda x: x.reshape(3, -1), lambda x: x.reshape(3, 0), np.zeros((0, 3)))
    check(lambda x: x.view(2, 3), lambda x: x.reshape(2, 3), np.arange(6.0))


@given(data=st.data())
def test_flatten(data):
    shape = data.draw(shapes())
    a = data.draw(arrays(shape))
    if len(shape) == 0:
        check(lambda x: x.flatten(), lambda x: x.reshape(1), a)
        return
    s = data.draw(st.integers(0, len(shape) - 1))
    e = data.draw(st.integers(s, len(shape) - 1))
    new = shape[:s] + (int(np.prod(shape[s:e + 1])),) + shape[e + 1:]
    check(lambda x: x.flatten(s, e), lambda x: x.reshape(new), a)
    check(lambda x: x.flatten(), lambda x: x.reshape(-1), a)


@given(data=st.data())
def test_squeeze_unsqueeze(data):
    shape = data.draw(shapes(max_side=2))  # many size-1 axes
    a = data.draw(arrays(shape))
    check(lambda x: x.squeeze(), np.squeeze, a)
    ones = [i for i, s in enumerate(shape) if s == 1]
    if ones:
        ax = data.draw(st.lists(st.sampled_from(ones), unique=True, min_size=1).map(tuple))
        check(lambda x: x.squeeze(ax), lambda x: np.squeeze(x, axis=ax), a)
        check(lambda x: x.squeeze(ax[0] - len(shape)), lambda x: np.squeeze(x, axis=ax[0]), a)
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    check(lambda x: x.unsqueeze(axis), lambda x: np.expand_dims(x, axis), a)
    check(lambda x: x.expand_dims(axis), lambda x: np.expand_dims(x, axis), a)


# ---- transpose / swapaxes / T ---------------------------------------------------------------------

@given(data=st.data())
def test_transpose(data):
    shape = data.draw(shapes(max_dims=4))
    nd = len(shape)
    perm = data.draw(st.permutations(range(nd)))
    neg = data.draw(st.lists(st.booleans(), min_size=nd, max_size=nd))
    axes = tuple(p - nd if n else p for p, n in zip(perm, neg))
    a = data.draw(arrays(shape))
    check(lambda x: x.transpose(*axes), lambda x: x.transpose(perm), a)
    check(lambda x: x.transpose(axes), lambda x: x.transpose(perm), a)
    check(lambda x: x.permute(*axes), lambda x: x.transpose(perm), a)
    check(lambda x: x.transpose(), lambda x: x.transpose(), a)
    check(lambda x: x.T, lambda x: x.T, a)


@given(data=st.data())
def test_swapaxes(data):
    shape = data.draw(shapes(min_dims=1))
    nd = len(shape)
    i, j = data.draw(st.integers(-nd, nd - 1)), data.draw(st.integers(-nd, nd - 1))
    check(lambda x: x.swapaxes(i, j), lambda x: np.swapaxes(x, i, j), data.draw(arrays(shape)))


# ---- expand / broadcast_to ------------------------------------------------------------------------

@given(data=st.data())
def test_broadcast_to_and_expand(data):
    shape = data.draw(shapes())
    lead = data.draw(st.lists(st.integers(1, 3), max_size=2))
    target = tuple(lead) + tuple(data.draw(st.integers(1, 3)) if s == 1 else s for s in shape)
    a = data.draw(arrays(shape))
    check(lambda x: x.broadcast_to(*target), lambda x: np.broadcast_to(x, target).copy(), a)
    check(lambda x: x.broadcast_to(target), lambda x: np.broadcast_to(x, target).copy(), a)
    keep = tuple(t if i < len(lead) or s == 1 else -1 for i, (t, s) in
                 enumerate(zip(target, (1,) * len(lead) + shape)))  # -1 keeps a dimension (PyTorch)
    check(lambda x: x.expand(*keep), lambda x: np.broadcast_to(x, target).copy(), a)


def test_expand_gradient_sums_copies():
    x = T([[1.0], [2.0]])
    x.expand(3, 2, 4).sum().backward()
    np.testing.assert_array_equal(x.grad, [[12.0], [12.0]])


# ---- __getitem__ --------------------------------------------------------------------------------

@given(data=st.data())
def test_getitem_basic(data):
    """ints, slices (any step, negative too), None and Ellipsis."""
    shape = data.draw(shapes(min_dims=1, max_side=5))
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True))
    check(lambda x: x[index], lambda x: np.asarray(x[index]).copy(), data.draw(arrays(shape)))


@given(data=st.data())
def test_getitem_integer_arrays_scatter_add(data):
    """Integer-array indices (repeats and negatives likely): the gradient accumulates."""
    shape = data.draw(shapes(min_dims=1))
    index = data.draw(hnp.integer_array_indices(shape, result_shape=hnp.array_shapes(max_dims=2, max_side=6)))
    a = data.draw(arrays(shape))
    check(lambda x: x[index], lambda x: x[index], a)
    x = T(a)
    out = x[index]
    g = np.random.default_rng(1).standard_normal(out.shape)
    out.backward(g)
    expected = np.zeros(shape)
    np.add.at(expected, index, g)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)


def test_getitem_repeated_indices_explicit():
    x = T([10.0, 20.0, 30.0])
    out = x[[0, 2, 0, 0, -1]]
    np.testing.assert_array_equal(out.numpy(), [10, 30, 10, 10, 30])
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 2.0])
    y = T(np.arange(12.0).reshape(3, 4))
    y[Tensor(np.array([1, 1])), :].sum().backward()  # an index given as an int Tensor
    np.testing.assert_array_equal(y.grad, [[0] * 4, [2] * 4, [0] * 4])


@given(data=st.data())
def test_getitem_array_with_slices(data):
    shape = data.draw(shapes(min_dims=2, max_dims=3))
    idx = data.draw(hnp.arrays(np.int64, st.integers(1, 5), elements=st.integers(-shape[1], shape[1] - 1)))
    a = data.draw(arrays(shape))
    check(lambda x: x[:, idx], lambda x: x[:, idx], a)
    check(lambda x: x[1:, idx, ...] if len(shape) == 2 else x[1:, idx, ::-1],
          lambda x: x[1:, idx, ...] if len(shape) == 2 else x[1:, idx, ::-1], a)


@given(data=st.data())
def test_getitem_boolean_mask(data):
    shape = data.draw(shapes(min_dims=1))
    k = data.draw(st.integers(1, len(shape)))  # a mask over the leading k axes
    mask = data.draw(hnp.arrays(np.bool_, shape[:k]))
    a = data.draw(arrays(shape))
    check(lambda x: x[mask], lambda x: x[mask], a)
    check(lambda x: x[Tensor(mask)], lambda x: x[mask], a)


def test_getitem_out_of_range_names_shape():
    with pytest.raises(IndexError, match=r"\(2, 3\)"):
        T(np.zeros((2, 3)))[5]


# ---- concatenate / stack / split --------------------------------------------------------------

@given(data=st.data())
def test_concatenate(data):
    shape = data.draw(shapes(min_dims=1))
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1))
    sizes = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=4))
    arrs = []
    for n in sizes:
        s = list(shape)
        s[axis] = n
        arrs.append(data.draw(arrays(tuple(s))))
    check(lambda *xs: concatenate(xs, axis=axis), lambda *xs: np.concatenate(xs, axis=axis), *arrs)
    check(lambda *xs: tg.cat(list(xs), axis), lambda *xs: np.concatenate(xs, axis=axis), *arrs)


def test_concatenate_mixed_requires_grad():
    a, b = T([1.0, 2.0]), T([3.0], requires_grad=False)
    out = concatenate([a, b, 4.0 * a])
    out.backward(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_array_equal(a.grad, [1 + 16, 2 + 20])
    assert b.grad is None


@given(data=st.data())
def test_stack(data):
    shape = data.draw(shapes())
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    n = data.draw(st.integers(1, 3))
    arrs = [data.draw(arrays(shape)) for _ in range(n)]
    check(lambda *xs: stack(xs, axis=axis), lambda *xs: np.stack(xs, axis=axis), *arrs)


@given(data=st.data())
def test_split(data):
    shape = data.draw(shapes(min_dims=1, max_side=6))
    nd = len(shape)
    axis = data.draw(st.integers(-nd, nd - 1))
    n = shape[axis]
    sections = data.draw(st.one_of(
        st.sampled_from([d for d in range(1, n + 1) if n % d == 0]),
        st.lists(st.integers(0, n + 1), max_size=3).map(sorted)))
    a = data.draw(arrays(shape))
    pieces = split(T(a), sections, axis=axis)
    ref = np.split(a, sections, axis=axis)
    assert len(pieces) == len(ref)
    for p, r in zip(pieces, ref):
        assert_close(p, r)

    def weighted(x):  # every piece scaled differently, so a misplaced gradient shows
        return concatenate([p * (k + 1.0) for k, p in enumerate(split(x, sections, axis=axis))], axis=axis)
    assert gradcheck(weighted, [T(a)])


# ---- astype (Cast) ----------------------------------------------------------------------------------

def test_cast_gradcheck():
    """float64 -> float32 -> float64 has gradient 1; eps is large enough for float32 rounding."""
    a = np.random.default_rng(0).uniform(-2, 2, (3, 4))
    assert gradcheck(lambda x: (x.astype(np.float32) * 3.0).astype(np.float64), [T(a)], eps=1e-2)
    assert gradcheck(lambda x: x.float().double() ** 2, [T(a)], eps=1e-2, atol=1e-4)


def test_cast_forward_and_gradient_dtypes():
    x = Tensor(np.array([1.5, -2.0], np.float32), requires_grad=True)
    y = x.astype(np.float64)
    assert y.dtype == np.float64 and type(y._ctx).__name__ == "Cast"
    assert_close(y, np.array([1.5, -2.0]))
    (y * y).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, np.array([3.0, -4.0], np.float32))
    assert x.astype(np.float32) is x
    i = x.astype(np.int64)  # to an integer dtype: no gradient
    assert i.dtype == np.int64 and not i.requires_grad


@pytest.mark.parametrize("index", [
    (None, [0, 0, 2]), ([1, 1, 0], None), (Ellipsis, [0, 0, 3]), ([2, 2], Ellipsis, None),
    (None, slice(None), [1, 1]), ([[0, 1], [1, 1]], None, slice(None, None, -1)),
])
def test_getitem_array_mixed_with_none_ellipsis(index):
    a = np.arange(12.0).reshape(3, 4)
    check(lambda x: x[index], lambda x: x[index], a)
    x = T(a)
    out = x[index]
    g = np.random.default_rng(2).standard_normal(out.shape)
    out.backward(g)
    expected = np.zeros(a.shape)
    np.add.at(expected, index, g)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)
