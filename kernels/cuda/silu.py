"""SiLU (x * sigmoid(x), SwiGLU's gate) forward and backward on flat (contiguous 1-D) arrays.

Elementwise, grid-stride like gelu.py: a fixed number of blocks walks the whole array."""
import functools
import math

import numpy as np
from numba import cuda

from ._launch import elementwise_grid, kernel, launch, numba_type


@functools.cache
def build(dtype):
    T = numba_type(dtype)
    ONE = np.dtype(dtype).type(1)

    @kernel(f"void({T}[::1], {T}[::1])")
    def silu_forward(x, y):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            v = x[i]
            y[i] = v / (ONE + math.exp(-v))   # exp overflows to inf for v << 0: v / inf = -0, the limit

    @kernel(f"void({T}[::1], {T}[::1], {T}[::1])")
    def silu_backward(x, g, dx):
        for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
            v = x[i]
            s = ONE / (ONE + math.exp(-v))
            dx[i] = g[i] * s * (ONE + v * (ONE - s))   # d(x s(x)) = s (1 + x (1 - s))

    return silu_forward, silu_backward


def forward(x, y):
    launch(build(np.dtype(x.dtype))[0], *elementwise_grid(x.size), x, y)


def backward(x, g, dx):
    launch(build(np.dtype(x.dtype))[1], *elementwise_grid(x.size), x, g, dx)
