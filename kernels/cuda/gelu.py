"""GELU forward and backward on flat (contiguous 1-D) arrays: exact (erf) and tanh forms.

Elementwise, grid-stride: a fixed number of blocks walks the whole array, so any size fits in
one launch. Constants are cast to the array's dtype (float32 stays float32)."""
import functools
import math

import numpy as np
from numba import cuda

from ._launch import elementwise_grid, kernel, launch, numba_type

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@functools.cache
def build(dtype):
    T = numba_type(dtype)
    t = np.dtype(dtype).type
    HALF, ONE, THREE = t(0.5), t(1), t(3)
    K, S2PI, INV_SQRT_2, INV_SQRT_2PI = t(0.044715), t(_SQRT_2_OVER_PI), t(_INV_SQRT_2), t(_INV_SQRT_2PI)

    @kernel(f"void({T}[::1], boolean, {T}[::1])")
    def gelu_forward(x, tanh_approx, y):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            v = x[i]
            if tanh_approx:
                y[i] = HALF * v * (ONE + math.tanh(S2PI * (v + K * v * v * v)))
            else:
                y[i] = v * (HALF * (ONE + math.erf(v * INV_SQRT_2)))

    @kernel(f"void({T}[::1], {T}[::1], boolean, {T}[::1])")
    def gelu_backward(x, g, tanh_approx, dx):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            v = x[i]
            if tanh_approx:
                th = math.tanh(S2PI * (v + K * v * v * v))
                du = S2PI * (ONE + THREE * K * v * v)
                dx[i] = g[i] * (HALF * (ONE + th) + HALF * v * (ONE - th * th) * du)
            else:
                cdf = HALF * (ONE + math.erf(v * INV_SQRT_2))
                dx[i] = g[i] * (cdf + v * (math.exp(-HALF * v * v) * INV_SQRT_2PI))

    return gelu_forward, gelu_backward


def forward(x, tanh_approx, y):
    launch(build(np.dtype(x.dtype))[0], *elementwise_grid(x.size), x, tanh_approx, y)


def backward(x, g, tanh_approx, dx):
    launch(build(np.dtype(x.dtype))[1], *elementwise_grid(x.size), x, g, tanh_approx, dx)
