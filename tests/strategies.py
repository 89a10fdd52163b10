"""Hypothesis strategies and checking helpers shared by the op tests.

Shapes are small (sides 1..4, up to 3 dims) so that an elementwise finite-difference
gradcheck stays cheap; they include size-1 axes, 0-d scalars and odd sizes, and
``min_side=0`` gives empty arrays where an op defines them. Values are float64 and
bounded, so every op is checked in the dtype gradcheck needs."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinygrad_lm import Tensor, gradcheck

MAX_SIDE = 4


def shapes(min_dims=0, max_dims=3, min_side=1, max_side=MAX_SIDE):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, min_side=1, max_side=MAX_SIDE):
    """Tuples of ``num_shapes`` shapes that broadcast together (size-1 axes, missing leading axes)."""
    return hnp.mutually_broadcastable_shapes(num_shapes=num_shapes, min_dims=min_dims, max_dims=max_dims,
                                             min_side=min_side, max_side=max_side).map(lambda r: r.input_shapes)


def floats(lo=-3.0, hi=3.0):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def arrays(shape, lo=-3.0, hi=3.0):
    """float64 arrays with values in [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=floats(lo, hi))


def positive(shape, lo=0.2, hi=3.0):
    return arrays(shape, lo, hi)


def nonzero(shape, lo=0.2, hi=3.0):
    """Values with lo <= |x| <= hi and either sign (denominators, kinks at 0 avoided)."""
    signs = hnp.arrays(np.bool_, shape)
    return st.tuples(arrays(shape, lo, hi), signs).map(lambda t: np.where(t[1], t[0], -t[0]))


def distinct(shape, step=0.05):
    """Distinct values on a grid offset by step/2: no ties and no zeros, every pair at least
    ``step`` apart. For ops with kinks (abs, relu, max, clip), where a finite difference across
    a tie or a kink would be meaningless."""
    half = max(60, int(np.prod(shape)) // 2 + 1)
    return hnp.arrays(np.int64, shape, elements=st.integers(-half, half - 1), unique=True).map(
        lambda a: a * step + step / 2)


def axes(ndim, allow_none=True):
    """An axis argument for a reduction over ``ndim`` dims: None, an int (maybe negative) or a tuple."""
    options = [st.tuples()] if ndim == 0 else [
        st.integers(-ndim, ndim - 1),
        st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim).flatmap(
            lambda ax: st.tuples(*[st.sampled_from([a, a - ndim]) for a in ax])),
    ]
    if allow_none:
        options.append(st.none())
    return st.one_of(*options)


def norm_axes(axis, ndim):
    """The axis argument as a sorted tuple of non-negative ints (what NumPy reduces over)."""
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else axis
    return tuple(sorted(a % ndim for a in axis))


def T(a, requires_grad=True):
    """A float64 leaf tensor from an array."""
    return Tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def assert_close(actual, expected, rtol=1e-10, atol=1e-12):
    """Values, shape and dtype equal (float64 forward against a NumPy formula)."""
    actual = actual.numpy() if isinstance(actual, Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != expected {expected.dtype}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def check(fn, np_fn, *arrays_, grad=True, rtol=1e-10, atol=1e-12, **gc):
    """fn(*tensors) equals np_fn(*arrays) in float64, and its backward passes gradcheck."""
    out = fn(*[T(a) for a in arrays_])
    assert_close(out, np_fn(*arrays_), rtol=rtol, atol=atol)
    assert out.requires_grad
    if grad:
        assert gradcheck(fn, [T(a) for a in arrays_], **gc)


def parameters_as_inputs(module, call):
    """(params, fn, restore) for gradchecking a module's parameters: fn(*tensors) puts ``tensors``
    (gradcheck's float64 copies, in parameters() order) wherever the parameters sit (tied ones in
    each place) and returns call(); restore() puts the originals back. gradcheck perturbs its own
    copies, so a closure that left the module's parameters in place would check nothing."""
    params = module.parameters()
    index = {id(p): i for i, p in enumerate(params)}
    slots = [(m, k, index[id(v)]) for m in module.modules() for k, v in vars(m).items() if id(v) in index]

    def put(tensors):
        for m, k, i in slots:
            setattr(m, k, tensors[i])

    def fn(*tensors):
        put(tensors)
        return call()

    return params, fn, lambda: put(params)


def lying(fn):
    """fn, but its values under no_grad (gradcheck's numeric evaluations) 1% off the one backward
    saw: a gradcheck of it must fail, or the harness checks nothing."""
    import tinygrad_lm as tg

    def wrong(*tensors):
        loss = fn(*tensors)
        return loss if tg.is_grad_enabled() else loss * 1.01
    return wrong
